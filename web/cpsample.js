// CPSample frontend: the guard's work, drawn in the nodes where the user looks.
// - Train Guard: a live chart of loss and accuracy per σ band (event "cpsample.train"), left on the node.
// - Load Guard: the guard file's facts in a panel (GET /cpsample/guard_info, then the run's own output).
// - Protect Model: the settings the run used (its output text), and after each sampling run what the
//   gate did (event "cpsample.gate").
// - Save Guard: when it has saved, the guard lists (Load Guard) are refreshed, so the file is there to pick.
// - Guard links get their own colour.
// - Template browser: the examples' cards get their titles and one-sentence descriptions.
import { app } from "../../scripts/app.js";
import { api } from "../../scripts/api.js";
import { makePanel, renderFacts, renderGate, renderSettings, renderTraining } from "./cpsample/panels.js";
import { describeTemplateCards, packFolder } from "./cpsample/templates.js";

const NAME = "CPSample";
const GUARD_TYPE = "CPSAMPLE_GUARD";
const GUARD_COLOR = "#d4a72c";
const TRAIN_NODES = new Set(["CPSampleTrainGuard", "CPSampleTrainGuardWithClassImages"]);
const LOAD_NODE = "CPSampleLoadGuard";
const PROTECT_NODE = "CPSampleProtectModel";
const SAVE_NODE = "CPSampleSaveGuard";

function findNode(id) {
  const graph = app.graph;
  if (!graph || id == null) return null;
  return graph.getNodeById(Number(id)) ?? graph.getNodeById(String(id)) ?? null;
}

// One DOM widget per node holding the panel; not saved with the workflow (it is a view, not an input).
function addPanel(node, kind, minHeight) {
  const root = makePanel(kind);
  const widget = node.addDOMWidget(`cpsample_${kind}`, "cpsample_panel", root, {
    serialize: false,
    hideOnZoom: false,
    getMinHeight: () => minHeight,
  });
  widget.serialize = false;
  node.cpsample = { ...(node.cpsample ?? {}), panel: root, kind };
  const size = node.computeSize();
  node.setSize([Math.max(node.size[0], 340), Math.max(node.size[1], size[1])]);
  return root;
}

// ---- Train Guard: streamed points while training, the whole series when the node finishes.

function onTrainEvent({ detail }) {
  const node = findNode(detail?.node);
  const panel = node?.cpsample?.panel;
  if (!panel || node.cpsample.kind !== "train") return;
  if (detail.done) {
    node.cpsample.train = { ...detail, total: detail.steps };
  } else {
    const prev = node.cpsample.train;
    const train = prev && !prev.done && prev.total === detail.total ? prev : { points: [], total: detail.total, done: false };
    if (detail.step < (train.points.at(-1)?.step ?? 0)) train.points = []; // a new run
    node.cpsample.live = (node.cpsample.live ?? 0) + 1; // messages received while training (tests read it)
    train.points.push({ step: detail.step, loss: detail.loss, accuracy: detail.accuracy });
    node.cpsample.train = train;
  }
  renderTraining(panel, node.cpsample.train);
  node.setDirtyCanvas(true, true);
}

// ---- Load Guard: facts from the route for the picked file; the run's output when it executes.

async function showFacts(node) {
  const panel = node.cpsample?.panel;
  const name = node.widgets?.find((w) => w.name === "guard_name")?.value;
  if (!panel) return;
  if (!name) return renderFacts(panel, null);
  try {
    const res = await api.fetchApi(`/cpsample/guard_info?name=${encodeURIComponent(name)}`);
    const body = await res.json();
    if (res.ok) renderFacts(panel, body);
    else renderFacts(panel, null, body.error ?? `guard_info: HTTP ${res.status}`);
  } catch (e) {
    renderFacts(panel, null, `cannot read ${name}: ${e}`);
  }
  node.setDirtyCanvas(true, true);
}

// ---- Protect Model: the gate report after each sampling run.

function onGateEvent({ detail }) {
  const node = findNode(detail?.node);
  const panel = node?.cpsample?.panel;
  if (!panel || node.cpsample.kind !== "gate") return;
  node.cpsample.gate = detail;
  renderGate(panel, detail);
  node.setDirtyCanvas(true, true);
}

function setupNode(node) {
  const type = node.comfyClass ?? node.type;
  if (TRAIN_NODES.has(type)) {
    renderTraining(addPanel(node, "train", 190), null);
  } else if (type === LOAD_NODE) {
    renderFacts(addPanel(node, "facts", 210), null);
    const w = node.widgets?.find((x) => x.name === "guard_name");
    if (w) {
      const cb = w.callback;
      w.callback = function (...args) {
        const r = cb?.apply(this, args);
        showFacts(node);
        return r;
      };
    }
    // The widget value arrives after creation when a workflow is loaded.
    setTimeout(() => showFacts(node), 0);
  } else if (type === PROTECT_NODE) {
    const panel = addPanel(node, "gate", 190);
    renderGate(panel, null);
    renderSettings(panel, null);
  }
}

function onExecuted(node, output) {
  const panel = node.cpsample?.panel;
  if (!panel || !output) return;
  const train = output.cpsample_train?.[0];
  if (train && node.cpsample.kind === "train") {
    node.cpsample.train = { ...train, total: train.steps };
    renderTraining(panel, node.cpsample.train);
  }
  const facts = output.cpsample_guard?.[0];
  if (facts && node.cpsample.kind === "facts") renderFacts(panel, facts);
  const said = output.text?.[0];
  if (typeof said === "string" && node.cpsample.kind === "gate") {
    node.cpsample.settings = said.replace(/^CPSample Protect Model: /, "");
    renderSettings(panel, node.cpsample.settings);
  }
}

function register() {
  app.registerExtension({
    name: NAME,
    async setup() {
      const canvas = app.canvas;
      if (canvas?.default_connection_color_byType) canvas.default_connection_color_byType[GUARD_TYPE] = GUARD_COLOR;
      if (globalThis.LGraphCanvas?.link_type_colors) globalThis.LGraphCanvas.link_type_colors[GUARD_TYPE] = GUARD_COLOR;
      api.addEventListener("cpsample.train", onTrainEvent);
      api.addEventListener("cpsample.gate", onGateEvent);
      describeTemplateCards(api, packFolder(import.meta.url));
    },
    async beforeRegisterNodeDef(nodeType, nodeData) {
      const type = nodeData?.name;
      if (type === SAVE_NODE) {
        const saved = nodeType.prototype.onExecuted;
        nodeType.prototype.onExecuted = function (output) {
          const r = saved?.apply(this, [output]);
          app.refreshComboInNodes?.();  // the new file joins Load Guard's list without a manual refresh
          return r;
        };
        return;
      }
      if (!(TRAIN_NODES.has(type) || type === LOAD_NODE || type === PROTECT_NODE)) return;
      const created = nodeType.prototype.onNodeCreated;
      nodeType.prototype.onNodeCreated = function (...args) {
        const r = created?.apply(this, args);
        setupNode(this);
        return r;
      };
      const executed = nodeType.prototype.onExecuted;
      nodeType.prototype.onExecuted = function (output) {
        const r = executed?.apply(this, [output]);
        onExecuted(this, output);
        return r;
      };
    },
  });
}

// The page may list this script under more than one URL (e.g. an install with an old copy of the
// pack); a second registration of the same name makes the frontend throw, so register once.
if (!globalThis.__cpsampleFrontend && !app.extensions?.some?.((e) => e.name === NAME)) {
  globalThis.__cpsampleFrontend = true;
  register();
}
