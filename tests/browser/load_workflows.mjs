// Drive ComfyUI's own frontend in headless Chromium (playwright-core, no browser download):
// load each example workflow the way a user's file drop does (app.loadGraphData), and report what
// the page shows as JSON. tests/test_browser.py starts the server, runs this and checks the result.
//
//   node load_workflows.mjs --url http://127.0.0.1:PORT --out result.json --shots DIR \
//        [--chromium /usr/bin/chromium] [--modules DIR/node_modules] [--resave DIR] workflow.json ...
//
// --resave DIR also writes each workflow as the frontend serialises it after loading (what its Save
// writes) to DIR/<name>.json: the way the example workflows are kept in the frontend's own format.
//
// The report holds, per workflow: the nodes (type, registered or not, error flag, widget names and
// values), the missing-nodes dialog text if one opened, toasts; plus a negative control (a workflow
// with an unknown node type, to prove the missing-node signal works), the Templates browser's text,
// the loaded extensions, the concept_type -> guide preset checks, and console / page errors.
import fs from "node:fs";
import path from "node:path";
import { createRequire } from "node:module";

function parseArgs(argv) {
  const options = { files: [], chromium: "/usr/bin/chromium", modules: null };
  for (let i = 0; i < argv.length; i++) {
    const arg = argv[i];
    if (arg === "--url") options.url = argv[++i];
    else if (arg === "--out") options.out = argv[++i];
    else if (arg === "--shots") options.shots = argv[++i];
    else if (arg === "--chromium") options.chromium = argv[++i];
    else if (arg === "--modules") options.modules = argv[++i];
    else if (arg === "--resave") options.resave = argv[++i];
    else options.files.push(arg);
  }
  if (!options.url || !options.out || !options.shots) {
    throw new Error("usage: load_workflows.mjs --url URL --out FILE --shots DIR [--chromium PATH] [--modules DIR] workflow.json ...");
  }
  return options;
}

const options = parseArgs(process.argv.slice(2));
const require = createRequire(path.join(path.resolve(options.modules || "node_modules"), "noop.js"));
const { chromium } = require("playwright-core");

const CHROMIUM_FLAGS = [
  "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run", "--disable-background-networking",
  "--disable-component-update", "--disable-sync",
];
const report = { console_errors: [], page_errors: [], workflows: {}, steps: [] };
const step = (text) => { report.steps.push(text); console.error(`[browser] ${text}`); };

fs.mkdirSync(options.shots, { recursive: true });
const userDataDir = fs.mkdtempSync(path.join(options.shots, ".chromium-profile-"));
// a persistent context on a new, empty profile folder (removed at the end)
const context = await chromium.launchPersistentContext(userDataDir, {
  executablePath: options.chromium, headless: true, args: CHROMIUM_FLAGS, viewport: { width: 1600, height: 1000 },
});
try {
  const page = context.pages()[0] || (await context.newPage());
  page.setDefaultTimeout(30000);
  page.on("console", (message) => {
    if (message.type() === "error") report.console_errors.push(message.text().slice(0, 1000));
  });
  page.on("pageerror", (error) => report.page_errors.push(String(error.stack || error.message).slice(0, 2000)));

  step(`opening ${options.url}`);
  await openApp(page);

  report.registered = await page.evaluate(() => ["UCEEraseConcepts", "UCEModerate", "UCEDebias"].filter((t) => t in LiteGraph.registered_node_types));
  report.extensions = await page.evaluate(() => (window.app.extensions || []).map((e) => e.name));

  // Templates browser: opens on a first start with an empty canvas; open it by command otherwise.
  step("templates browser");
  // on a new server it opens by itself, a little after start-up; else open it as the sidebar does
  let templatesText = await waitForDialog(page, "Templates", 8000);
  if (!templatesText) {
    await page.evaluate(() => window.app.extensionManager.command.execute("Comfy.BrowseTemplates"));
    templatesText = await waitForDialog(page, "Templates", 15000);
  }
  // wait until the list is filled in ("Showing N of M templates"), then for the thumbnails
  const deadline = Date.now() + 20000;
  while (templatesText && !/Showing \d+ of \d+/i.test(templatesText) && Date.now() < deadline) {
    await page.waitForTimeout(250);
    templatesText = await dialogText(page, "Templates");
  }
  await page.waitForTimeout(1500);

  report.templates_dialog = templatesText || "";
  await page.screenshot({ path: path.join(options.shots, "templates_browser.png") });
  await closeDialogs(page);

  for (const file of options.files) {
    const name = path.basename(file, ".json");
    step(`loading ${name}`);
    const workflow = JSON.parse(fs.readFileSync(file, "utf8"));
    report.workflows[name] = await loadAndInspect(page, workflow, name);
    if (options.resave) {
      const saved = await page.evaluate(() => window.app.graph.serialize());
      fs.mkdirSync(options.resave, { recursive: true });
      fs.writeFileSync(path.join(options.resave, `${name}.json`), JSON.stringify(saved, null, 2) + "\n");
    }
    await closeDialogs(page);
    await fitView(page);
    await page.screenshot({ path: path.join(options.shots, `${name}.png`) });
    await closeDialogs(page);
  }

  // negative control: the same signal must see a node type nobody registered
  if (options.files.length) {
    step("negative control: an unknown node type");
    const workflow = JSON.parse(fs.readFileSync(options.files[0], "utf8"));
    const victim = workflow.nodes.find((n) => n.type.startsWith("UCE"));
    victim.type = "UCEDoesNotExist";
    report.negative_control = await loadAndInspect(page, workflow, "negative-control");
    await page.screenshot({ path: path.join(options.shots, "negative_control_missing_node.png") });
    await closeDialogs(page);
  }

  const artist = options.files.find((f) => path.basename(f) === "uce_erase_artist_style.json");
  if (artist) {
    step("concept_type -> guide presets (on a freshly loaded page)");
    await openApp(page);
    await closeDialogs(page);
    const workflow = JSON.parse(fs.readFileSync(artist, "utf8"));
    await loadAndInspect(page, workflow, "uce-presets-check");
    await closeDialogs(page);
    report.presets = await presetChecks(page);
    await fitView(page);
    await page.screenshot({ path: path.join(options.shots, "presets_after_object.png") });
  }
  step("done");
} catch (error) {
  report.fatal = String(error.stack || error);
} finally {
  fs.writeFileSync(options.out, JSON.stringify(report, null, 2));
  await context.close();
  fs.rmSync(userDataDir, { recursive: true, force: true });
}
if (report.fatal) {
  console.error(report.fatal);
  process.exit(1);
}

async function openApp(page) {
  await page.goto(options.url, { waitUntil: "load", timeout: 90000 });
  await page.waitForFunction(
    () => window.app?.graph && window.LiteGraph && window.app.extensionManager && Object.keys(window.LiteGraph.registered_node_types).length > 50,
    null, { timeout: 90000 },
  );
  await page.waitForTimeout(1500); // let extensions finish their setup
}

async function waitForDialog(page, heading, timeout) {
  const deadline = Date.now() + timeout;
  while (Date.now() < deadline) {
    const text = await dialogText(page, heading);
    if (text) return text;
    await page.waitForTimeout(250);
  }
  return null;
}

async function dialogText(page, heading) {
  return page.evaluate((heading) => {
    const dialogs = [...document.querySelectorAll(".p-dialog, [role=dialog]")].map((d) => d.innerText);
    return dialogs.find((text) => text.includes(heading)) || null;
  }, heading);
}

async function closeDialogs(page) {
  for (let i = 0; i < 4; i++) {
    const open = await page.evaluate(() => document.querySelectorAll(".p-dialog, [role=dialog]").length);
    if (!open) return;
    // the close (x) button; Escape does not close every dialog (e.g. the Templates browser)
    const clicked = await page.evaluate(() => {
      for (const button of document.querySelectorAll(".p-dialog button, [role=dialog] button")) {
        if (/close/i.test(button.getAttribute("aria-label") || "") || button.querySelector(".pi-times, [class*='lucide--x']")) {
          button.click();
          return true;
        }
      }
      return false;
    });
    if (!clicked) await page.keyboard.press("Escape");
    await page.waitForTimeout(400);
  }
}

async function fitView(page) {
  // ComfyUI's own "Fit view to selected nodes" command fits the whole graph when nothing is selected
  await page.evaluate(async () => {
    window.app.canvas.deselectAll?.();
    await window.app.extensionManager.command.execute("Comfy.Canvas.FitView");
    window.app.canvas.setDirty(true, true);
  });
  await page.waitForTimeout(500);
}

async function loadAndInspect(page, workflow, name) {
  await closeDialogs(page);
  await page.evaluate(() => document.querySelectorAll(".p-toast-message").forEach((t) => t.remove()));
  await page.evaluate(async ({ workflow, name }) => {
    await window.app.loadGraphData(workflow, true, true, name);
  }, { workflow, name });
  await page.waitForTimeout(1000);
  return page.evaluate(() => {
    const missingDialog = [...document.querySelectorAll(".p-dialog, [role=dialog]")]
      .map((d) => d.innerText)
      .find((text) => /missing nodes/i.test(text)) || null;
    return {
      missing_dialog: missingDialog,
      toasts: [...document.querySelectorAll(".p-toast-message")].map((t) => t.innerText),
      nodes: window.app.graph.nodes.map((node) => ({
        id: node.id,
        type: node.type,
        registered: node.type in LiteGraph.registered_node_types,
        has_errors: Boolean(node.has_errors),
        constructor: node.constructor?.name || "",
        widgets: (node.widgets || []).map((w) => [w.name, w.value]),
      })),
    };
  });
}

async function presetChecks(page) {
  // 1. a real click on the right arrow of the concept_type combo (art -> object), as a user does
  const before = await presetState(page);
  const target = await page.evaluate(() => {
    const node = window.app.graph.nodes.find((n) => n.type === "UCEEraseConcepts");
    const widget = node.widgets.find((w) => w.name === "concept_type");
    const canvas = window.app.canvas;
    canvas.ds.scale = 1;
    canvas.ds.offset = [-node.pos[0] + 200, -node.pos[1] + 100];
    canvas.setDirty(true, true);
    canvas.draw(true, true);
    const height = widget.computedHeight || LiteGraph.NODE_WIDGET_HEIGHT || 20;
    const local = [node.pos[0] + node.size[0] - 22, node.pos[1] + widget.y + height / 2];
    const [cx, cy] = canvas.ds.convertOffsetToCanvas(local);
    const rect = canvas.canvas.getBoundingClientRect();
    return { x: rect.left + cx, y: rect.top + cy, widgetY: widget.y };
  });
  await page.waitForTimeout(300);
  await page.mouse.click(target.x, target.y);
  await page.waitForTimeout(500);
  const afterClick = await presetState(page);

  // 2. the same through the widget API (setValue calls the widget's callback like the UI does)
  const setType = (value) => page.evaluate((value) => {
    const node = window.app.graph.nodes.find((n) => n.type === "UCEEraseConcepts");
    const widget = node.widgets.find((w) => w.name === "concept_type");
    if (typeof widget.setValue === "function") widget.setValue(value, { node, canvas: window.app.canvas });
    else { widget.value = value; widget.callback?.(value, window.app.canvas, node); }
  }, value);
  const setGuide = (value) => page.evaluate((value) => {
    const node = window.app.graph.nodes.find((n) => n.type === "UCEEraseConcepts");
    node.widgets.find((w) => w.name === "guide").value = value;
  }, value);

  await setType("art");
  const backToArt = await presetState(page);
  await setType("object");
  const toObject = await presetState(page);
  await setGuide("impressionism");
  await setType("art");
  const customGuideKept = await presetState(page);
  await setGuide("");
  await setType("custom"); // "" is custom's preset guide too: stays ""
  const emptyGuideToCustom = await presetState(page);
  await setType("art");
  const emptyGuideToArt = await presetState(page);
  await setType("object");
  return { before, click_target: target, after_click: afterClick, back_to_art: backToArt, to_object: toObject,
           custom_guide_kept: customGuideKept, empty_guide_to_custom: emptyGuideToCustom, empty_guide_to_art: emptyGuideToArt, final: await presetState(page) };
}

async function presetState(page) {
  return page.evaluate(() => {
    const node = window.app.graph.nodes.find((n) => n.type === "UCEEraseConcepts");
    const value = (name) => node.widgets.find((w) => w.name === name).value;
    return { concept_type: value("concept_type"), guide: value("guide") };
  });
}
