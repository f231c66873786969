// CPSample frontend: give guard links their own colour so they are easy to follow in a graph.
import { app } from "../../scripts/app.js";

const GUARD_TYPE = "CPSAMPLE_GUARD";
const GUARD_COLOR = "#d4a72c";

app.registerExtension({
  name: "CPSample.GuardLinks",
  async setup() {
    const canvas = app.canvas;
    if (canvas?.default_connection_color_byType) {
      canvas.default_connection_color_byType[GUARD_TYPE] = GUARD_COLOR;
    }
    if (globalThis.LGraphCanvas?.link_type_colors) {
      globalThis.LGraphCanvas.link_type_colors[GUARD_TYPE] = GUARD_COLOR;
    }
  },
});
