// Drive ComfyUI's own frontend in headless Chromium (playwright-core, no browser download):
// load each example workflow the way a user's file drop does (app.loadGraphData), and report what
// the page shows as JSON. tests/test_browser.py starts the server, runs this and checks the result.
//
//   node load_workflows.mjs --url http://127.0.0.1:PORT --out result.json --shots DIR \
//        [--chromium /usr/bin/chromium] [--modules DIR/node_modules] [--nodes2] [--scale 2] \
//        [--resave DIR] [--thumbnails [--viewport WxH] [--zoom Z]] workflow.json ...
//
// --nodes2 switches the frontend's "Nodes 2.0" on (Comfy.VueNodes.Enabled: nodes and widgets are
// Vue components over the canvas); without it the setting is left off and the LiteGraph canvas draws
// them. The concept_type -> guide checks then use the Vue widgets themselves (the combo's list box,
// the guide's textarea) instead of clicks on the canvas.
//
// Screenshots (DIR/<name>.png) show the whole graph, fitted, at --scale device pixels per CSS pixel
// (default 2), with the frontend's "low quality" rendering threshold (the smallest font it draws)
// lowered so that the canvas still draws titles and widget values at that zoom: at 100 % a person
// reads them.
//
// --resave DIR also writes each workflow as the frontend serialises it after loading (what its Save
// writes) to DIR/<name>.json: the way the example workflows are kept in the frontend's own format.
//
// --thumbnails only takes one picture per workflow: the page in focus mode (no menus or side bars),
// the view framed on the UCE node(s) and the loaders that feed them, at a zoom of at least --zoom
// (default 1.4; not the whole graph: shown at a Templates-browser card's size, every whole graph
// looks alike and none can be read), in a --viewport WxH page (default 1280x720), DIR/<name>.png;
// the report then holds just the frontend version, the shots and each frame (the nodes framed, the
// zoom, the boxes in graph units; devtools/uce_devtools/thumbnails.py makes the Templates-browser
// thumbnails from them).
//
// The report holds, per workflow: the nodes (type, registered or not, error flag, widget names and
// values; with Nodes 2.0 also whether a Vue node shows it and what its text widgets and combos
// show), the missing-node notice (dialog or notification) and toasts; plus a negative control (a
// workflow with an unknown node type, to prove the missing-node signal works), the Templates
// browser's text, the loaded extensions, the concept_type -> guide preset checks, and console / page
// errors.
import fs from "node:fs";
import path from "node:path";
import { createRequire } from "node:module";

function parseArgs(argv) {
  const options = { files: [], chromium: "/usr/bin/chromium", modules: null, nodes2: false, scale: 2, thumbnails: false, viewport: null, zoom: 1.4 };
  for (let i = 0; i < argv.length; i++) {
    const arg = argv[i];
    if (arg === "--url") options.url = argv[++i];
    else if (arg === "--out") options.out = argv[++i];
    else if (arg === "--shots") options.shots = argv[++i];
    else if (arg === "--chromium") options.chromium = argv[++i];
    else if (arg === "--modules") options.modules = argv[++i];
    else if (arg === "--resave") options.resave = argv[++i];
    else if (arg === "--nodes2") options.nodes2 = true;
    else if (arg === "--scale") options.scale = Number(argv[++i]);
    else if (arg === "--thumbnails") options.thumbnails = true;
    else if (arg === "--viewport") options.viewport = argv[++i];
    else if (arg === "--zoom") options.zoom = Number(argv[++i]);
    else options.files.push(arg);
  }
  if (!options.url || !options.out || !options.shots) {
    throw new Error("usage: load_workflows.mjs --url URL --out FILE --shots DIR [--chromium PATH] [--modules DIR] [--nodes2] [--scale N] [--thumbnails [--viewport WxH] [--zoom Z]] workflow.json ...");
  }
  const [width, height] = (options.viewport || (options.thumbnails ? "1280x720" : "1600x1000")).split("x").map(Number);
  options.viewport = { width, height };
  return options;
}

const options = parseArgs(process.argv.slice(2));
const require = createRequire(path.join(path.resolve(options.modules || "node_modules"), "noop.js"));
const { chromium } = require("playwright-core");

const CHROMIUM_FLAGS = [
  "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run", "--disable-background-networking",
  "--disable-component-update", "--disable-sync",
];
const UCE_TYPES = ["UCEEraseConcepts", "UCEModerate", "UCEDebias"];
// The canvas draws no text where its font would be smaller than this many pixels (frontend default 8:
// below a zoom of about 0.57 at one device pixel per CSS pixel; a fitted example graph is about 0.5).
const MIN_FONT_SIZE_FOR_LOD = 3;
// The thumbnails' largest zoom (CSS pixels per graph unit; the smallest is --zoom)
const THUMBNAIL_MAX_ZOOM = 2;
const THUMBNAIL_MARGIN = 16; // CSS pixels around the framed nodes
const THUMBNAIL_BADGE = 22; // graph units above a node's title: the node-source badge ("comfyui-uce")
const report = { console_errors: [], page_errors: [], workflows: {}, steps: [], shots: [] };
// With Nodes 2.0, what the Vue widgets show must be the widget values: presetState collects mismatches.
const shownMismatches = [];
const step = (text) => { report.steps.push(text); console.error(`[browser] ${text}`); };

fs.mkdirSync(options.shots, { recursive: true });
const userDataDir = fs.mkdtempSync(path.join(options.shots, ".chromium-profile-"));
// a persistent context on a new, empty profile folder (removed at the end)
const context = await chromium.launchPersistentContext(userDataDir, {
  executablePath: options.chromium, headless: true, args: CHROMIUM_FLAGS, viewport: options.viewport,
  deviceScaleFactor: options.thumbnails ? 1 : options.scale,
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
  report.frontend_version = await page.evaluate(() => window.__COMFYUI_FRONTEND_VERSION__ || null);
  report.nodes2 = await setNodes2(page, options.nodes2);
  step(`frontend ${report.frontend_version}, Nodes 2.0 ${report.nodes2 ? "on" : "off"}`);

  if (options.thumbnails) await thumbnails(page);
  else await checks(page);
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

async function checks(page) {
  report.registered = await page.evaluate((types) => types.filter((t) => t in LiteGraph.registered_node_types), UCE_TYPES);
  report.extensions = await page.evaluate(() => (window.app.extensions || []).map((e) => e.name));

  // Templates browser: on a new server it opens by itself, a little after start-up; else open it
  // as the sidebar does
  step("templates browser");
  let templatesText = await waitForDialog(page, "Templates", 8000);
  if (!templatesText) {
    await page.evaluate(() => window.app.extensionManager.command.execute("Comfy.BrowseTemplates"));
    templatesText = await waitForDialog(page, "Templates", 15000);
  }
  // wait until the list is filled in (every workflow's card), then for the thumbnails
  const names = options.files.map((f) => path.basename(f, ".json"));
  const listed = (text) => /Showing \d+ of \d+/i.test(text) || names.every((n) => text.includes(n));
  const deadline = Date.now() + 20000;
  while (templatesText && !listed(templatesText) && Date.now() < deadline) {
    await page.waitForTimeout(250);
    templatesText = (await dialogText(page, "Templates")) || "";
  }
  await page.waitForTimeout(1500);
  report.templates_dialog = templatesText || "";
  await shot(page, "templates_browser");
  await closeDialogs(page);
  await prepareScreenshots(page);

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
    await shot(page, name);
    await closeDialogs(page);
  }

  // negative control: the same signal must see a node type nobody registered
  if (options.files.length) {
    step("negative control: an unknown node type");
    const workflow = JSON.parse(fs.readFileSync(options.files[0], "utf8"));
    const victim = workflow.nodes.find((n) => n.type.startsWith("UCE"));
    victim.type = "UCEDoesNotExist";
    report.negative_control = await loadAndInspect(page, workflow, "negative-control");
    await fitView(page);
    await shot(page, "negative_control_missing_node");
    await closeDialogs(page);
  }

  const artist = options.files.find((f) => path.basename(f) === "uce_erase_artist_style.json");
  if (artist) {
    step("concept_type -> guide presets (on a freshly loaded page)");
    await openApp(page);
    await closeDialogs(page);
    await prepareScreenshots(page);
    const workflow = JSON.parse(fs.readFileSync(artist, "utf8"));
    await loadAndInspect(page, workflow, "uce-presets-check");
    await closeDialogs(page);
    report.presets = report.nodes2 ? await presetChecksNodes2(page) : await presetChecks(page);
    await fitView(page);
    await shot(page, "presets_after_object");
  }
}

async function thumbnails(page) {
  await closeDialogs(page);
  await prepareScreenshots(page);
  await page.evaluate(async () => {
    await window.app.extensionManager.setting.set("Comfy.Graph.CanvasInfo", false);  // the FPS / node count corner
    await window.app.extensionManager.command.execute("Workspace.ToggleFocusMode");  // no menus, side bars, tabs
  });
  // what focus mode leaves: the zoom buttons and the menu button
  await page.addStyleTag({ content: ".comfy-menu-hamburger, .p-buttongroup.absolute.bottom-0 { visibility: hidden !important; }" });
  report.frames = {};
  for (const file of options.files) {
    const name = path.basename(file, ".json");
    step(`thumbnail of ${name}`);
    const workflow = JSON.parse(fs.readFileSync(file, "utf8"));
    await loadAndInspect(page, workflow, name);
    await closeDialogs(page);
    report.frames[name] = await frameOnUceNodes(page);
    await page.waitForTimeout(500);
    await shot(page, name, report.frames[name].pointer);
  }
}

// The thumbnail's view: the UCE node(s) (this pack's: UCEEraseConcepts, UCEModerate, UCEDebias,
// UCEProbe) and the nodes that feed them (loaders, model patches), zoomed in so far that titles and
// widget values can still be read with the picture shown at card size (a quarter of its width): at
// least --zoom, larger where that box is smaller. Where the box is larger than the view at that
// zoom, the UCE nodes stay whole across with their title at the top, and the feeders (on the left)
// are shown as far as they fit.
async function frameOnUceNodes(page) {
  const frame = await page.evaluate(({ minZoom, maxZoom, margin, badge }) => {
    const canvas = window.app.canvas;
    const graph = window.app.graph;
    canvas.deselectAll?.();
    const uce = graph.nodes.filter((n) => n.type.startsWith("UCE"));  // the editing nodes and UCEProbe
    if (!uce.length) throw new Error("no UCE node to frame");
    const feeders = [];
    const stack = [...uce];
    while (stack.length) {
      const node = stack.pop();
      for (let slot = 0; slot < (node.inputs || []).length; slot++) {
        const upstream = node.getInputNode(slot);
        if (upstream && !uce.includes(upstream) && !feeders.includes(upstream)) {
          feeders.push(upstream);
          stack.push(upstream);
        }
      }
    }
    const bounds = (nodes) => {
      const box = [Infinity, Infinity, -Infinity, -Infinity];
      for (const node of nodes) {
        const [x, y, w, h] = node.boundingRect;
        box[0] = Math.min(box[0], x); box[1] = Math.min(box[1], y);
        box[2] = Math.max(box[2], x + w); box[3] = Math.max(box[3], y + h);
      }
      return box;
    };
    const all = bounds([...uce, ...feeders]);
    const core = bounds(uce);
    all[1] = core[1] = Math.min(all[1], core[1] - badge);  // room for the pack's badge over the UCE node's title
    const rect = canvas.canvas.getBoundingClientRect();
    const fit = Math.min((rect.width - 2 * margin) / (all[2] - all[0]), (rect.height - 2 * margin) / (all[3] - all[1]));
    const scale = Math.min(maxZoom, Math.max(minZoom, fit));
    // the view's size in graph units, less the margins; where the box is placed in it
    const [viewW, viewH] = [(rect.width - 2 * margin) / scale, (rect.height - 2 * margin) / scale];
    const place = (lo, hi, coreLo, coreHi, size, keepHigh) => {
      if (hi - lo <= size) return (lo + hi - size) / 2;         // all of it, centred
      return keepHigh ? Math.min(coreLo, coreHi - size) : lo;  // the UCE nodes whole, the rest as fits
    };
    const left = place(all[0], all[2], core[0], core[2], viewW, true);
    const top = place(all[1], all[3], core[1], core[3], viewH, false);
    canvas.ds.scale = scale;
    canvas.ds.offset = [margin / scale - left, margin / scale - top];
    canvas.setDirty(true, true);
    // a spot of the view over no node, for the pointer (no hover effects, no tooltips)
    let pointer = [rect.width - 2, rect.height - 2];
    search: for (let y = rect.height - 4; y > 0; y -= 24) {
      for (let x = rect.width - 4; x > 0; x -= 24) {
        const [gx, gy] = canvas.ds.convertCanvasToOffset([x, y]);
        if (!graph.getNodeOnPos(gx, gy)) { pointer = [rect.left + x, rect.top + y]; break search; }
      }
    }
    const round = (box) => box.map((v) => Math.round(v));
    return {
      scale, box: round(all), uce_box: round(core), view: round([left, top, left + viewW, top + viewH]),
      nodes: [...uce, ...feeders].map((n) => n.type), pointer,
    };
  }, { minZoom: options.zoom, maxZoom: THUMBNAIL_MAX_ZOOM, margin: THUMBNAIL_MARGIN, badge: THUMBNAIL_BADGE });
  step(`  framed ${frame.nodes.join(", ")} at zoom ${frame.scale.toFixed(2)}`);
  return frame;
}

async function shot(page, name, pointer = null) {
  const file = path.join(options.shots, `${name}.png`);
  // the pointer off the nodes (`pointer`, or an empty spot of the canvas below a fitted graph): no tooltips
  const [x, y] = pointer || [options.viewport.width / 2, options.viewport.height - 40];
  await page.mouse.move(x, y);
  await page.waitForTimeout(200);
  await page.screenshot({ path: file });
  report.shots.push(file);
}

async function openApp(page) {
  await page.goto(options.url, { waitUntil: "load", timeout: 90000 });
  await page.waitForFunction(
    () => window.app?.graph && window.LiteGraph && window.app.extensionManager && Object.keys(window.LiteGraph.registered_node_types).length > 50,
    null, { timeout: 90000 },
  );
  await page.waitForTimeout(1500); // let extensions finish their setup
}

async function setNodes2(page, on) {
  return page.evaluate(async (on) => {
    const settings = window.app.extensionManager.setting;
    if (on || settings.get("Comfy.VueNodes.Enabled")) await settings.set("Comfy.VueNodes.Enabled", on);
    return Boolean(settings.get("Comfy.VueNodes.Enabled"));
  }, on);
}

// Screenshots that a person can read: no minimap over the graph, no "Nodes 2.0" banner, and the
// canvas draws text even at the zoom that fits a whole example graph.
async function prepareScreenshots(page) {
  await page.evaluate(async (minFontSize) => {
    const settings = window.app.extensionManager.setting;
    const set = async (id, value) => { try { await settings.set(id, value); } catch (error) { console.warn(`${id}: ${error}`); } };
    await set("Comfy.Minimap.Visible", false);
    await set("LiteGraph.Canvas.MinFontSizeForLOD", minFontSize);
    const banner = [...document.querySelectorAll("div")].find((d) => d.children.length < 8 && /^Introducing Nodes 2\.0/.test(d.innerText || ""));
    for (let element = banner; element; element = element.parentElement) {
      const close = [...element.querySelectorAll("button")].find((b) => b.querySelector("[class*='lucide--x'], .pi-times"));
      if (close) { close.click(); break; }
    }
  }, MIN_FONT_SIZE_FOR_LOD);
  await page.waitForTimeout(300);
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
  // ComfyUI's own "Fit view to selected nodes" command: the whole graph when nothing is selected
  await page.evaluate(async () => {
    const canvas = window.app.canvas;
    canvas.deselectAll?.();
    await new Promise((resolve) => requestAnimationFrame(() => requestAnimationFrame(resolve)));
    await window.app.extensionManager.command.execute("Comfy.Canvas.FitView");
    canvas.setDirty(true, true);
  });
  await page.waitForTimeout(800); // the fit is animated
}

async function loadAndInspect(page, workflow, name) {
  await closeDialogs(page);
  await page.evaluate(() => document.querySelectorAll(".p-toast-message").forEach((t) => t.remove()));
  await page.evaluate(async ({ workflow, name }) => {
    await window.app.loadGraphData(workflow, true, true, name);
  }, { workflow, name });
  await page.waitForTimeout(1000);
  if (report.nodes2) {
    // each node a Vue component: wait until all are there
    await page.waitForFunction(
      () => window.app.graph.nodes.every((n) => document.querySelector(`[data-node-id="${n.id}"]`)), null, { timeout: 15000 },
    ).catch(() => {});
  }
  return page.evaluate(({ nodes2, uceTypes }) => {
    // missing node types: a dialog (1.32) or a notification (newer frontends)
    const notices = [...document.querySelectorAll(".p-dialog, [role=dialog], .p-toast-message, [role=status], [role=alert]")]
      .map((d) => d.innerText.trim());
    const toasts = [...document.querySelectorAll(".p-toast-message, [role=status], [role=alert]")]
      .map((t) => t.innerText.trim()).filter(Boolean);
    const shown = (node) => {  // what the Vue node's text boxes and combos show
      const values = {};
      const element = document.querySelector(`[data-node-id="${node.id}"]`);
      for (const widget of element?.querySelectorAll("[data-widget-name]") || []) {
        const box = widget.querySelector("textarea");
        const combo = widget.querySelector("[role=combobox]");
        if (box) values[widget.dataset.widgetName] = box.value;
        else if (combo) values[widget.dataset.widgetName] = combo.innerText.trim();
      }
      return values;
    };
    return {
      missing_notice: notices.find((text) => /missing nodes?\b/i.test(text)) || null,
      toasts,
      nodes: window.app.graph.nodes.map((node) => ({
        id: node.id,
        type: node.type,
        registered: node.type in LiteGraph.registered_node_types,
        has_errors: Boolean(node.has_errors),
        constructor: node.constructor?.name || "",
        widgets: (node.widgets || []).map((w) => [w.name, w.value]),
        ...(nodes2 ? { vue_node: Boolean(document.querySelector(`[data-node-id="${node.id}"]`)) } : {}),
        ...(nodes2 && uceTypes.includes(node.type) ? { shown: shown(node) } : {}),
      })),
    };
  }, { nodes2: report.nodes2, uceTypes: UCE_TYPES });
}

// -- concept_type -> guide presets ---------------------------------------------------------------
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
  return presetSequence(page, { before, click_target: target, after_click: afterClick }, setType, setGuide);
}

async function presetChecksNodes2(page) {
  // Nodes 2.0: the user picks from the combo's list box and types into the guide's textarea
  const id = await page.evaluate(() => {
    const node = window.app.graph.nodes.find((n) => n.type === "UCEEraseConcepts");
    const canvas = window.app.canvas;
    canvas.ds.scale = 1;
    canvas.ds.offset = [-node.pos[0] + 200, -node.pos[1] + 100];
    canvas.setDirty(true, true);
    return node.id;
  });
  await page.waitForTimeout(500);
  const widget = (name) => page.locator(`[data-node-id="${id}"] [data-widget-name="${name}"]`);
  const setType = async (value) => {
    await widget("concept_type").locator("[role=combobox]").click();
    await page.locator("[role=option]").filter({ hasText: new RegExp(`^\\s*${value}\\s*$`) }).first().click();
    await page.waitForTimeout(300);
  };
  const setGuide = async (value) => {
    await widget("guide").locator("textarea").fill(value);
    await page.waitForTimeout(200);
  };
  const before = await presetState(page);
  await setType("object");
  const afterClick = await presetState(page);
  return presetSequence(page, { before, after_click: afterClick }, setType, setGuide);
}

async function presetSequence(page, result, setType, setGuide) {
  await setType("art");
  result.back_to_art = await presetState(page);
  await setType("object");
  result.to_object = await presetState(page);
  await setGuide("impressionism");
  await setType("art");
  result.custom_guide_kept = await presetState(page);
  await setGuide("");
  await setType("custom"); // "" is custom's preset guide too: stays ""
  result.empty_guide_to_custom = await presetState(page);
  await setType("art");
  result.empty_guide_to_art = await presetState(page);
  await setType("object");
  result.final = await presetState(page);
  result.shown_mismatches = shownMismatches;
  return result;
}

async function presetState(page) {
  const state = await page.evaluate(() => {
    const node = window.app.graph.nodes.find((n) => n.type === "UCEEraseConcepts");
    const value = (name) => node.widgets.find((w) => w.name === name).value;
    const element = document.querySelector(`[data-node-id="${node.id}"]`);
    const shown = element && {
      concept_type: element.querySelector("[data-widget-name='concept_type'] [role=combobox]")?.innerText.trim(),
      guide: element.querySelector("[data-widget-name='guide'] textarea")?.value,
    };
    return { concept_type: value("concept_type"), guide: value("guide"), shown };
  });
  const { shown, ...values } = state;
  if (report.nodes2 && JSON.stringify(shown) !== JSON.stringify(values)) shownMismatches.push({ values, shown });
  return values;
}
