"""The example workflows in a real browser: ComfyUI's own frontend served by a real server, driven
in headless Chromium by tests/browser/load_workflows.mjs (playwright-core with the system Chromium).

Every test runs against two frontends (uce_devtools.browser.frontends()): the comfyui-frontend-package
version ComfyUI 0.3.75 pins (in the venv; the classic LiteGraph canvas draws nodes and widgets) and
the newest one (scripts/test.sh installs it into .cache/frontend-latest/), with "Nodes 2.0" on
(nodes and widgets are Vue components).

Needs: node, Chromium (Debian's /usr/bin/chromium), playwright-core (scripts/test.sh installs it
into .cache/node/) and the frontends (scripts/setup.sh, scripts/test.sh). Where one of them is
missing the tests are skipped with the reason. Screenshots go to
$UCE_ARTIFACTS_DIR/browser/frontend-<version>/ (default out/artifacts/browser/).
"""

from __future__ import annotations

import json
import math
import subprocess

import pytest
from uce_devtools import browser
from uce_devtools import workflow_api as wf
from uce_devtools.paths import REPO_ROOT
from uce_devtools.server import ComfyServer, artifacts_dir

PACK_NAME = "comfyui-uce"
WORKFLOWS = sorted((REPO_ROOT / "workflows").glob("*.json"))
UCE_CLASSES = ("UCEEraseConcepts", "UCEModerate", "UCEDebias")
EXTENSION_NAME = "uce.conceptTypePresets"
EXTENSION_FILE = "uce_presets.js"
DRIVER_TIMEOUT = 420
FRONTENDS = browser.frontends()


@pytest.fixture(scope="module", params=FRONTENDS, ids=[f.id for f in FRONTENDS])
def browser_report(request, tmp_path_factory):
    frontend: browser.Frontend = request.param
    missing = browser.missing_tools() + [m for m in [frontend.missing()] if m]
    if missing:
        pytest.skip(f"BROWSER TESTS ({frontend.id}) SKIPPED, cannot run here: " + "; ".join(missing))
    base = tmp_path_factory.mktemp(f"comfy_{frontend.id}")
    shots = artifacts_dir("browser", frontend.id)
    # the models the workflows name, as empty files: the frontend finds each in the server's lists
    browser.add_model_placeholders(base, WORKFLOWS)
    classifier = base / "models" / "uce_classifiers" / "clip-vit-base-patch32"  # UCE CLIP Classifier Loader lists it
    classifier.mkdir(parents=True)
    for name in ("config.json", "model.safetensors"):
        (classifier / name).touch()
    with ComfyServer.start(base, frontend=True, pack_name=PACK_NAME, extra_args=frontend.server_args(), timeout=240) as server:
        object_info = server.object_info()
        result = base / "browser-report.json"
        try:
            run = browser.run_driver(server.url, result, shots, WORKFLOWS, extra=frontend.driver_args(), timeout=DRIVER_TIMEOUT)
        except subprocess.TimeoutExpired as error:
            pytest.fail(f"the browser driver did not finish in {DRIVER_TIMEOUT} s:\n{error.stderr}")
        (shots / "comfyui-server.log").write_text(server.log_text(), encoding="utf-8")
    assert result.is_file(), f"the browser driver wrote no report (exit {run.returncode}):\n{run.stderr[-4000:]}"
    report = json.loads(result.read_text(encoding="utf-8"))
    (shots / "browser-report.json").write_text(json.dumps(report, indent=2), encoding="utf-8")
    assert not report.get("fatal"), f"browser driver failed: {report['fatal']}\n{run.stderr[-4000:]}"
    assert run.returncode == 0, run.stderr[-4000:]
    report["object_info"] = object_info
    report["frontend"] = frontend
    report["shots_dir"] = shots
    return report


def extension_errors(report: dict) -> list[str]:
    """Browser console errors that mention our frontend extension's file (a failed import, a double load …)."""
    return [e for e in report["console_errors"] if EXTENSION_FILE in e]


# -- the frontend knows our nodes and shows the workflows as saved -------------------------------
def test_the_page_runs_the_frontend_under_test(browser_report):
    frontend = browser_report["frontend"]
    assert browser_report["frontend_version"] == frontend.version
    assert browser_report["nodes2"] == frontend.nodes2


def test_frontend_registers_the_uce_nodes(browser_report):
    assert sorted(browser_report["registered"]) == sorted(UCE_CLASSES)


def test_templates_browser_lists_the_examples(browser_report):
    text = browser_report["templates_dialog"]
    assert PACK_NAME in text, text[:1000]
    for path in WORKFLOWS:
        assert path.stem in text, f"{path.stem} not in the Templates browser:\n{text[:1000]}"


def test_missing_node_signal_works(browser_report):
    """Negative control: a workflow with an unknown node type is reported as missing."""
    control = browser_report["negative_control"]
    assert control["missing_notice"] and "UCEDoesNotExist" in control["missing_notice"]
    bad = [n for n in control["nodes"] if n["type"] == "UCEDoesNotExist"]
    assert bad and not bad[0]["registered"] and bad[0]["has_errors"]


@pytest.mark.parametrize("path", WORKFLOWS, ids=[p.stem for p in WORKFLOWS])
def test_workflow_loads_without_missing_nodes(path, browser_report):
    loaded = browser_report["workflows"][path.stem]
    assert loaded["missing_notice"] is None, loaded["missing_notice"]
    assert not loaded["toasts"], loaded["toasts"]  # e.g. "Invalid workflow against zod schema", a missing model
    for node in loaded["nodes"]:
        assert node["registered"] and not node["has_errors"], node
        if browser_report["nodes2"]:
            assert node["vue_node"], node  # Nodes 2.0 shows each node as a Vue component
    workflow = json.loads(path.read_text(encoding="utf-8"))
    # newer frontends keep node ids as strings
    assert sorted(str(n["id"]) for n in loaded["nodes"]) == sorted(str(n["id"]) for n in workflow["nodes"])
    assert (browser_report["shots_dir"] / f"{path.stem}.png").is_file()


@pytest.mark.parametrize("path", WORKFLOWS, ids=[p.stem for p in WORKFLOWS])
def test_widgets_show_the_workflow_values(path, browser_report):
    """Every node's widgets, as the frontend built them, hold the workflow's values, in the order
    workflow_api reads them from /object_info (so the converter and the frontend agree)."""
    object_info = browser_report["object_info"]
    loaded = {str(n["id"]): n for n in browser_report["workflows"][path.stem]["nodes"]}
    workflow = json.loads(path.read_text(encoding="utf-8"))
    uce_nodes = 0
    for node in workflow["nodes"]:
        if node["type"] in wf.NOTE_TYPES:
            continue
        info = object_info[node["type"]]
        expected = wf.widget_values(node, info)
        names = [name for name, _ in wf.widget_names(info)]
        frontend_node = loaded[str(node["id"])]
        shown = {name: value for name, value in frontend_node["widgets"] if name in names}
        assert [n for n, _ in frontend_node["widgets"] if n in names] == names, node["type"]
        for name in names:
            assert _same(shown[name], expected[name]), f"{node['type']} {node['id']}.{name}: shows {shown[name]!r}, file has {expected[name]!r}"
        if node["type"] in UCE_CLASSES:
            uce_nodes += 1
            order = info["input_order"]
            assert names == list(order["required"])[2:] + list(order.get("optional", []))  # all but model and clip
            if browser_report["nodes2"]:  # what the Vue node's text boxes and combos really show
                on_screen = frontend_node["shown"]
                assert on_screen, node["type"]
                for name, text in on_screen.items():
                    assert text == str(expected[name]), f"{node['type']} {node['id']}.{name}: the page shows {text!r}, file has {expected[name]!r}"
    assert uce_nodes >= 1 or any(n["type"].startswith("UCE") for n in workflow["nodes"])


# -- our frontend extension: concept_type -> guide presets ---------------------------------------
def test_uce_extension_loads_once(browser_report):
    assert extension_errors(browser_report) == []
    assert EXTENSION_NAME in browser_report["extensions"]


def test_concept_type_sets_the_preset_guide(browser_report):
    presets = browser_report["presets"]
    assert presets["before"] == {"concept_type": "art", "guide": "art"}
    # the click on the combo's arrow really changed the type (the UI works either way)
    assert presets["after_click"]["concept_type"] == "object"
    assert presets["after_click"]["guide"] == ""  # object's preset guide: the unconditional prompt
    assert presets["back_to_art"] == {"concept_type": "art", "guide": "art"}
    assert presets["to_object"] == {"concept_type": "object", "guide": ""}
    assert presets["custom_guide_kept"] == {"concept_type": "art", "guide": "impressionism"}  # typed guides stay
    assert presets["empty_guide_to_custom"] == {"concept_type": "custom", "guide": ""}
    assert presets["empty_guide_to_art"] == {"concept_type": "art", "guide": "art"}
    assert presets["shown_mismatches"] == []  # Nodes 2.0: the widgets on the page show the same values


def test_no_uncaught_page_errors(browser_report):
    assert not browser_report["page_errors"], browser_report["page_errors"]


def _same(shown, expected) -> bool:
    if isinstance(expected, float) or isinstance(shown, float):
        return isinstance(shown, (int, float)) and math.isclose(float(shown), float(expected), rel_tol=1e-6, abs_tol=1e-9)
    return shown == expected
