// Titles and descriptions for the pack's cards in the template browser (Workflow → Browse Templates).
//
// The frontend builds a custom node's template from its file name alone: title = name, description =
// name with "_" and "-" as spaces (ComfyUI_frontend 1.32.9, src/platform/workflow/templates/repositories/
// workflowTemplatesStore.ts, the custom-template branches of groupedTemplates and enhancedTemplates;
// composables/useTemplateWorkflows.ts, getTemplateTitle / getTemplateDescription). It reads no index file,
// translation or workflow field for them. So the pack writes each example's title and one-sentence
// description into the workflow file (extra.cpsample_title, extra.cpsample_description; made by
// tools/make_example_workflows.py), and this module puts them on the pack's cards when they appear.
//
// Cards are found by the frontend's own attribute data-testid="template-workflow-<name>" (1.32.9 and later
// card grids); the title is the card's <h3>, the description the <p> beside it. Only the pack's own
// templates (its /workflow_templates entry) are touched, and only their text: the card still loads the
// file it loaded before. Vue rewrites a text only when its own value changes, and a re-mounted card is
// seen again by the observer, so the texts stay.

const CARD = '[data-testid^="template-workflow-"]';
const PREFIX = "template-workflow-";

let meta = null; // Promise<Map<name, {title, description}>>, fetched when a card first appears
let scheduled = false;

async function loadMeta(api, moduleName) {
  const map = new Map();
  try {
    const res = await api.fetchApi("/workflow_templates");
    const names = res.ok ? ((await res.json())?.[moduleName] ?? []) : [];
    await Promise.all(names.map(async (name) => {
      const r = await api.fetchApi(`/workflow_templates/${encodeURIComponent(moduleName)}/${encodeURIComponent(name)}.json`);
      if (!r.ok) return;
      const extra = (await r.json())?.extra ?? {};
      if (typeof extra.cpsample_title === "string" || typeof extra.cpsample_description === "string") {
        map.set(name, { title: extra.cpsample_title, description: extra.cpsample_description });
      }
    }));
  } catch (e) {
    console.warn(`CPSample: template descriptions not loaded: ${e}`);
  }
  return map;
}

function setText(el, text) {
  if (!el || typeof text !== "string" || !text) return;
  if (el.textContent.trim() !== text) el.textContent = text;
  if (el.getAttribute("title") !== text) el.setAttribute("title", text);
}

function describe(map) {
  for (const card of document.querySelectorAll(CARD)) {
    const name = card.getAttribute("data-testid").slice(PREFIX.length);
    const m = map.get(name);
    if (!m) continue;
    const title = card.querySelector("h3");
    setText(title, m.title);
    setText(title?.parentElement?.querySelector("p"), m.description);
    const img = card.querySelector("img");
    if (img && m.title && img.alt !== m.title) img.alt = m.title;
    if (card.dataset.cpsampleTemplate !== name) card.dataset.cpsampleTemplate = name;
  }
}

function run(api, moduleName) {
  scheduled = false;
  if (!document.querySelector(CARD)) return; // no template browser open: nothing to do
  meta ??= loadMeta(api, moduleName);
  meta.then(describe);
}

/** Watch the page for the pack's template cards and give them their titles and descriptions. */
export function describeTemplateCards(api, moduleName) {
  if (!moduleName || typeof MutationObserver === "undefined") return;
  const observer = new MutationObserver(() => {
    if (scheduled) return;
    scheduled = true;
    setTimeout(() => run(api, moduleName), 30);
  });
  observer.observe(document.body, { childList: true, subtree: true, characterData: true });
}

/** The pack's folder name, as ComfyUI serves its web files (/extensions/<folder>/...) and lists its
 * templates (/workflow_templates → {<folder>: [...]}). */
export function packFolder(scriptUrl) {
  const parts = new URL(scriptUrl).pathname.split("/");
  const i = parts.indexOf("extensions");
  return i >= 0 && parts[i + 1] ? decodeURIComponent(parts[i + 1]) : null;
}
