"""A real headless ComfyUI server (main.py, CPU) with this pack linked into its custom_nodes.

One server per module. Every example workflow in workflows/ is turned into an API prompt from its
UI file with the server's own /object_info (uce_devtools.workflow_api), patched for the tiny model
(checkpoint name, 64x64, 2 steps, a short preserve list where the workflow uses the built-in
~1,700-entry list, which takes minutes to encode on a CPU), queued through POST /prompt and checked
through /history and the files it writes.
"""

from __future__ import annotations

import json
import re
import time
from pathlib import Path

import numpy as np
import pytest
import safetensors
from PIL import Image
from uce_devtools import comfy_env, tiny_classifier, tiny_models
from uce_devtools import tiny_t5_families as t5f
from uce_devtools import workflow_api as wf
from uce_devtools.paths import CACHE_DIR, REPO_ROOT
from uce_devtools.server import ComfyServer, artifacts_dir, status_messages

PACK_NAME = "comfyui-uce"
WORKFLOW_DIR = REPO_ROOT / "workflows"
WORKFLOWS = sorted(WORKFLOW_DIR.glob("*.json"))
# Flux needs T5-XXL and a 3072-wide DiT, WAN the 4096-wide UMT5-XXL and heads of 128 channels, HiDream
# T5-XXL and Llama-3.1-8B, which no tiny file can stand in for (ComfyUI's loaders fix their sizes): those
# workflows are validated by the server, not run (tests/test_families.py edits and samples tiny models of
# these families in process); the SD3.5 one runs on a tiny SD3.
VALIDATED_ONLY = {"uce_erase_flux": {"UNETLoader", "DualCLIPLoader", "VAELoader"},
                  "uce_erase_wan22_video": {"UNETLoader", "CLIPLoader", "VAELoader"},
                  # QuadrupleCLIPLoader (a V3 node) lists its files as options that /prompt does not check
                  "uce_erase_hidream": {"UNETLoader", "VAELoader"}}
RUNNABLE = [p for p in WORKFLOWS if p.stem not in VALIDATED_ONLY]
# File names the examples use: what ComfyUI's own examples for each family load.
MODEL_FILES = {
    "CheckpointLoaderSimple": [["v1-5-pruned-emaonly.safetensors"], ["sd3.5_large_fp8_scaled.safetensors"]],
    "UNETLoader": [
        ["flux1-dev.safetensors", "default"], ["wan2.2_ti2v_5B_fp16.safetensors", "default"],
        ["hidream_i1_dev_bf16.safetensors", "default"],
    ],
    "QuadrupleCLIPLoader": [[
        "clip_l_hidream.safetensors", "clip_g_hidream.safetensors", "t5xxl_fp8_e4m3fn_scaled.safetensors",
        "llama_3.1_8b_instruct_fp8_scaled.safetensors",
    ]],
    "DualCLIPLoader": [["clip_l.safetensors", "t5xxl_fp16.safetensors", "flux", "default"]],
    "CLIPLoader": [["umt5_xxl_fp8_e4m3fn_scaled.safetensors", "wan", "default"]],
    "VAELoader": [["ae.safetensors"], ["wan2.2_vae.safetensors"]],
}
UCE_CLASSES = sorted(wf.UCE_CLASSES)
# Nodes that read an edit instead of making one: (output types, output names).
READER_OUTPUTS = {"UCEProbe": [["IMAGE", "STRING"], ["chart", "table"]], "UCESaveEdit": [["STRING"], ["lora_name"]]}
TINY_SIZE, TINY_STEPS = 64, 2
QUICK_ARTISTS = "Claude Monet\nRembrandt\nPablo Picasso\nAndy Warhol"
QUICK_PROFESSIONS = "teacher\nfarmer\nlawyer"
SD2_UNET_NAME = f"uce-tiny-sd2-unet-{tiny_models.TINY_MODELS_VERSION}.safetensors"
TIMINGS: dict[str, float] = {}


# -- fixtures ------------------------------------------------------------------------------------
def tiny_sd2_unet() -> Path:
    """A small random SD2.x-family UNet file (context 1024) that UNETLoader loads: a MODEL that no
    SD1.5 CLIP matches. Cached under .cache/diffusion_models/ (about 50 MB)."""
    path = CACHE_DIR / "diffusion_models" / SD2_UNET_NAME
    if path.is_file():
        return path
    comfy_env.import_comfyui()
    import comfy.ops
    import comfy.supported_models
    import safetensors.torch
    import torch
    from comfy.ldm.modules.diffusionmodules.openaimodel import UNetModel

    config = tiny_models.tiny_unet_config(context_dim=1024, channel_mult=[1], attention_from_level=0, adm_in_channels=None)
    model_config = comfy.supported_models.SD20(config)
    unet = UNetModel(**model_config.unet_config, dtype=torch.float32, device="cpu", operations=comfy.ops.disable_weight_init)
    tiny_models.randomize_(unet, 0, "sd2-unet-file")
    state = {key: value.to(torch.float16).contiguous() for key, value in unet.state_dict().items()}
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    safetensors.torch.save_file(state, str(tmp))
    tmp.replace(path)
    return path


@pytest.fixture(scope="module")
def checkpoint(comfy) -> Path:
    return tiny_models.tiny_sd15_checkpoint()


@pytest.fixture(scope="module")
def sd3_checkpoint(comfy) -> Path:
    return t5f.tiny_sd3_checkpoint()


@pytest.fixture(scope="module")
def server(tmp_path_factory, checkpoint, sd3_checkpoint):
    base = tmp_path_factory.mktemp("comfy_server")
    log = base / "comfyui-server.log"
    tiny_classifier.tiny_classifier(base / "models")  # for UCE CLIP Classifier Loader
    started = time.monotonic()
    srv = ComfyServer.start(
        base, checkpoints=[checkpoint, sd3_checkpoint], diffusion_models=[tiny_sd2_unet()], pack_name=PACK_NAME,
        log_path=log, timeout=240,
    )
    TIMINGS["server start"] = time.monotonic() - started
    try:
        yield srv
    finally:
        srv.stop()
        (artifacts_dir("server") / "comfyui-server.log").write_text(srv.log_text(), encoding="utf-8")
        (artifacts_dir("server") / "timings.json").write_text(json.dumps(TIMINGS, indent=2), encoding="utf-8")
    assert not srv.alive


@pytest.fixture(scope="module")
def object_info(server) -> dict:
    return server.object_info()


@pytest.fixture(scope="module")
def baseline(server, object_info, checkpoint) -> np.ndarray:
    """The unedited model's image for the artist prompt, sampled before any edit ran on this server.

    Every test that runs an edit on the server requests this fixture, so it always runs first.
    """
    prompt = artist_prompt(object_info, checkpoint)
    saves = wf.saves_by_branch(prompt)
    entry = run_ok(server, wf.prune_to(prompt, [saves["unedited"]]))
    return pixels(server, entry, saves["unedited"])


# -- helpers -------------------------------------------------------------------------------------
def derive(path: Path, object_info: dict, checkpoint: Path) -> dict:
    """The workflow's API prompt, with tiny-model settings patched into the derived graph.

    ``checkpoint``: the tiny checkpoint of the workflow's family (SD1.5, or SD3 for the SD3.5 example).
    """
    prompt = wf.derive_prompt(path, object_info)
    if wf.nodes_of_type(prompt, "CheckpointLoaderSimple"):
        wf.set_inputs(prompt, "CheckpointLoaderSimple", ckpt_name=checkpoint.name)
    for latent in ("EmptyLatentImage", "EmptySD3LatentImage"):
        if wf.nodes_of_type(prompt, latent):
            wf.set_inputs(prompt, latent, width=TINY_SIZE, height=TINY_SIZE)
    if wf.nodes_of_type(prompt, "KSampler"):
        wf.set_inputs(prompt, "KSampler", steps=TINY_STEPS)
    wf.fill_empty(prompt, ("UCEEraseConcepts", "UCEModerate"), "preserve", QUICK_ARTISTS)
    wf.fill_empty(prompt, ("UCEDebias", "UCEDebiasCalibrated"), "preserve", QUICK_PROFESSIONS)
    if wf.nodes_of_type(prompt, "UCEDebiasCalibrated"):
        wf.set_inputs(prompt, "UCEDebiasCalibrated", width=TINY_SIZE, height=TINY_SIZE, steps=TINY_STEPS,
                      images_per_round=1, max_rounds=2)
        wf.set_inputs(prompt, "UCEClassifierLoader", classifier_name=tiny_classifier.NAME)
    return prompt


def artist_prompt(object_info: dict, checkpoint: Path) -> dict:
    return derive(WORKFLOW_DIR / "uce_erase_artist_style.json", object_info, checkpoint)


def run_ok(server: ComfyServer, prompt: dict, timeout: float = 300) -> dict:
    entry = server.run_prompt(prompt, timeout=timeout)
    errors = status_messages(entry, "execution_error")
    assert entry["status"]["status_str"] == "success" and not errors, json.dumps(errors, indent=1)[:4000]
    return entry


def pixels(server: ComfyServer, entry: dict, save_id: str) -> np.ndarray:
    files = server.output_files(entry, save_id)
    assert files, f"SaveImage {save_id} wrote no image: {entry.get('outputs')}"
    assert all(f.is_file() for f in files), files
    return np.stack([np.asarray(Image.open(f).convert("RGB")) for f in files])


def cached_nodes(entry: dict) -> set[str]:
    return {node for data in status_messages(entry, "execution_cached") for node in data.get("nodes", [])}


def json_round_trip(value):
    return json.loads(json.dumps(value))


# -- the server and what it lists ----------------------------------------------------------------
def test_server_loads_the_pack_without_import_errors(server, object_info):
    assert server.import_failures(PACK_NAME) == [], server.log_tail()
    assert "IMPORT FAILED" not in "\n".join(
        line for line in server.log_text().splitlines() if PACK_NAME in line
    )
    for class_name in UCE_CLASSES:
        assert class_name in object_info
        assert object_info[class_name]["python_module"] == f"custom_nodes.{PACK_NAME}"


def test_object_info_matches_the_node_classes(object_info, comfy):
    """The server registers the pack's V3 nodes (comfy_entrypoint) as their schemas declare them."""
    pack = comfy_env.load_pack()
    assert not hasattr(pack, "NODE_CLASS_MAPPINGS") and callable(pack.comfy_entrypoint)
    assert set(pack.nodes.NODE_CLASSES) >= set(UCE_CLASSES) | set(READER_OUTPUTS)
    for class_name, node_class in pack.nodes.NODE_CLASSES.items():
        info = object_info[class_name]
        declared = json_round_trip(node_class.GET_NODE_INFO_V1())
        if class_name == "UCEClassifierLoader":  # lists the folders of the server's models dir, not this process's
            listed = info["input"]["required"]["classifier_name"][1]
            assert listed["options"] == [tiny_classifier.NAME]
            declared["input"]["required"]["classifier_name"][1]["options"] = listed["options"]
        for field in ("input", "input_order", "output", "output_name", "output_tooltips", "description", "category",
                      "display_name"):
            assert info[field] == declared[field], field  # types, defaults, ranges, tooltips, uce_guides …
        if class_name in UCE_CLASSES:  # the edit nodes
            assert info["output"] == ["MODEL", "STRING", "UCE_EDIT"] and info["output_name"] == ["MODEL", "report", "edit"]
        if class_name in READER_OUTPUTS:
            assert [info["output"], info["output_name"]] == READER_OUTPUTS[class_name]
        assert info["category"] == "conditioning/uce" and info["display_name"].startswith("UCE ")
        for section, inputs in declared["input"].items():
            if section == "hidden":  # PROMPT, EXTRA_PNGINFO …: no options, nothing shown
                continue
            for name, (_, options) in inputs.items():
                assert options.get("tooltip"), f"{class_name}.{name} has no tooltip"
        assert all(info["output_tooltips"])


def test_templates_browser_lists_every_workflow_with_its_thumbnail(server):
    templates = server.get_json("/workflow_templates")
    assert sorted(templates.get(PACK_NAME, [])) == sorted(p.stem for p in WORKFLOWS)
    for path in WORKFLOWS:
        status, body = server.request("GET", f"/api/workflow_templates/{PACK_NAME}/{path.name}")
        assert status == 200 and json.loads(body) == json.loads(path.read_text(encoding="utf-8"))
        status, body = server.request("GET", f"/api/workflow_templates/{PACK_NAME}/{path.stem}.jpg")
        assert status == 200, f"no thumbnail for {path.name}"
        assert body[:3] == b"\xff\xd8\xff" and len(body) < 120_000


# -- the example workflows -----------------------------------------------------------------------
def test_there_are_the_fourteen_example_workflows():
    assert {p.stem for p in WORKFLOWS} == {
        "uce_erase_artist_style", "uce_erase_object", "uce_moderate_nudity",
        "uce_debias_professions", "uce_erase_many_then_save", "uce_erase_flux", "uce_erase_sd35",
        "uce_erase_wan22_video", "uce_erase_hidream", "uce_probe_edit", "uce_erase_then_save_lora",
        "uce_load_saved_edit", "uce_debias_calibrated", "uce_moderate_nudity_hardened",
    }


@pytest.mark.parametrize("path", WORKFLOWS, ids=[p.stem for p in WORKFLOWS])
def test_workflow_is_complete_ui_format(path, object_info):
    workflow = json.loads(path.read_text(encoding="utf-8"))
    assert workflow["version"] == 0.4
    nodes = {node["id"]: node for node in workflow["nodes"]}
    assert workflow["last_node_id"] >= max(nodes)
    assert workflow["last_link_id"] >= max(link[0] for link in workflow["links"])
    types = [node["type"] for node in nodes.values()]
    assert types.count("Note") == 1, "each example has one Note saying what to change"
    for node in nodes.values():
        if node["type"] == "Note":
            continue
        info = object_info[node["type"]]
        module = info["python_module"]
        assert module == "nodes" or module.startswith("comfy_extras.") or module == f"custom_nodes.{PACK_NAME}", (
            f"{node['type']} is neither a ComfyUI built-in nor ours"
        )
        widgets = wf.widget_names(info)
        assert len(node.get("widgets_values", [])) == len(widgets) + sum(control for _, control in widgets), node["type"]
        for slot, item in enumerate(node.get("inputs", [])):
            if item.get("link") is not None:
                link = next(l for l in workflow["links"] if l[0] == item["link"])
                assert link[3] == node["id"] and link[4] == slot
        for slot, item in enumerate(node.get("outputs", [])):
            for link_id in item.get("links") or []:
                link = next(l for l in workflow["links"] if l[0] == link_id)
                assert link[1] == node["id"] and link[2] == slot
    for node in nodes.values():
        if node["type"] in MODEL_FILES:
            assert node["widgets_values"] in MODEL_FILES[node["type"]], node["widgets_values"]
        if node["type"] == "KSampler":
            assert node["widgets_values"][1] in ("fixed", "randomize", "increment", "decrement")
    assert path.with_suffix(".jpg").is_file()
    assert path.with_suffix(".jpg").stat().st_size < 120_000


@pytest.mark.parametrize("path", RUNNABLE, ids=[p.stem for p in RUNNABLE])
def test_workflow_runs_through_the_server(path, server, object_info, checkpoint, sd3_checkpoint, baseline, request):
    prompt = derive(path, object_info, sd3_checkpoint if path.stem == "uce_erase_sd35" else checkpoint)
    if wf.nodes_of_type(prompt, "LoraLoaderModelOnly"):  # the example loads an edit UCE Save Edit wrote
        wf.set_inputs(prompt, "LoraLoaderModelOnly", lora_name=request.getfixturevalue("saved_edit"))
    entry = run_ok(server, prompt)
    TIMINGS[path.stem] = entry["seconds"]
    outputs = entry["outputs"]
    for save_id in wf.nodes_of_type(prompt, "SaveImage"):
        images = pixels(server, entry, save_id)
        assert images.shape[1:] == (TINY_SIZE, TINY_SIZE, 3)
    for preview_id in wf.nodes_of_type(prompt, "PreviewAny"):
        report = outputs[preview_id]["text"][0]
        source = prompt[prompt[preview_id]["inputs"]["source"][0]]
        if source["class_type"] == "UCEProbe":
            assert report.startswith("UCE Probe on SD15"), report
            if "edit" in source["inputs"]:  # the edit names its concepts and guides
                assert "closeness to the guide" in report, report
            continue
        assert report.startswith("UCE ") and "effect at strength" in report, report
    for preview_id in wf.nodes_of_type(prompt, "PreviewImage"):
        assert outputs[preview_id]["images"], outputs[preview_id]
        if path.stem == "uce_erase_sd35":
            assert report.startswith("UCE erase on SD3 (SD3)") and "context_embedder" in report, report

    if path.stem in ("uce_erase_artist_style", "uce_erase_sd35"):
        saves = wf.saves_by_branch(prompt)
        edited, unedited = pixels(server, entry, saves["edited"]), pixels(server, entry, saves["unedited"])
        difference = np.abs(edited.astype(int) - unedited.astype(int)).mean()
        assert difference > 1.0, f"the edited and unedited images are (nearly) the same: mean |diff| {difference:.3f}"
    if path.stem == "uce_erase_many_then_save":
        (save_id,) = wf.nodes_of_type(prompt, "CheckpointSave")
        prefix = prompt[save_id]["inputs"]["filename_prefix"]
        written = sorted(server.output_dir.glob(prefix + "_*.safetensors"))
        assert written, f"CheckpointSave wrote nothing under {server.output_dir}"
        assert_edit_is_baked_in(written[-1], checkpoint)
    for save_id in wf.nodes_of_type(prompt, "UCESaveEdit"):
        name = saved_lora_name(outputs[save_id])
        assert_saved_edit(server, name)


@pytest.fixture(scope="module")
def saved_edit(server, object_info, checkpoint, baseline) -> str:
    """Name (as LoraLoaderModelOnly lists it) of an edit the save example wrote into the server's models/loras."""
    prompt = derive(WORKFLOW_DIR / "uce_erase_then_save_lora.json", object_info, checkpoint)
    (save_id,) = wf.nodes_of_type(prompt, "UCESaveEdit")
    entry = run_ok(server, wf.prune_to(prompt, [save_id]))
    name = saved_lora_name(entry["outputs"][save_id])
    assert_saved_edit(server, name)
    return name


def saved_lora_name(output: dict) -> str:
    """The file UCE Save Edit names in the report it shows."""
    report = output["text"][0]
    match = re.match(r"UCE Save Edit: (\S+\.safetensors)\n", report)
    assert match, report
    return match.group(1)


def assert_saved_edit(server: ComfyServer, name: str) -> None:
    path = server.base_dir / "models" / "loras" / name
    assert path.is_file(), f"UCE Save Edit wrote no {name} under the server's models/loras"
    with safetensors.safe_open(str(path), "pt") as f:
        metadata = f.metadata()
        keys = list(f.keys())
    assert metadata["uce.family"] == "SD1.x" and metadata["ss_network_module"] == "networks.lora", metadata
    assert keys and all(key.startswith("lora_unet_") for key in keys), keys[:4]


@pytest.mark.parametrize("name", sorted(VALIDATED_ONLY))
def test_big_model_workflows_validate_but_for_their_model_files(server, object_info, name):
    """Everything in the Flux, WAN and HiDream examples is valid for the server except the model files they name,
    which this machine does not have: /prompt lists only their loaders."""
    prompt = wf.derive_prompt(WORKFLOW_DIR / f"{name}.json", object_info)
    (uce,) = wf.nodes_of_type(prompt, "UCEEraseConcepts")
    assert prompt[uce]["inputs"]["pooled"] == "auto"
    status, body = post_prompt(server, prompt)
    assert status == 400, body
    failed = {prompt[node_id]["class_type"] for node_id in body["node_errors"]}
    assert failed == VALIDATED_ONLY[name], json.dumps(body["node_errors"])[:2000]
    for errors in body["node_errors"].values():
        assert all(error["type"] == "value_not_in_list" for error in errors["errors"]), errors


def test_api_prompts_from_before_the_pooled_option_still_run(server, object_info, checkpoint, baseline):
    """API prompts saved before the optional `pooled` input existed validate and run (pooled = auto)."""
    prompt = artist_prompt(object_info, checkpoint)
    (uce,) = wf.nodes_of_type(prompt, "UCEEraseConcepts")
    del prompt[uce]["inputs"]["pooled"]
    (report,) = wf.nodes_of_type(prompt, "PreviewAny")
    entry = run_ok(server, wf.prune_to(prompt, [report]))
    assert "label_emb" not in entry["outputs"][report]["text"][0]


def assert_edit_is_baked_in(saved: Path, original: Path) -> None:
    """The saved checkpoint's cross-attention K/V differ from the original's; its other weights do not."""
    with safetensors.safe_open(str(saved), "pt") as new, safetensors.safe_open(str(original), "pt") as old:
        kv = [k for k in old.keys() if ".attn2.to_k." in k or ".attn2.to_v." in k]
        assert kv and all(k in new.keys() for k in kv)
        assert any(not np.allclose(new.get_tensor(k).float().numpy(), old.get_tensor(k).float().numpy()) for k in kv)
        q = next(k for k in old.keys() if ".attn2.to_q." in k)
        assert np.allclose(new.get_tensor(q).float().numpy(), old.get_tensor(q).float().numpy(), atol=1e-3)


# -- bad inputs ----------------------------------------------------------------------------------
def post_prompt(server: ComfyServer, prompt: dict) -> tuple[int, dict]:
    status, body = server.post_json("/prompt", {"prompt": prompt, "client_id": server.client_id})
    return status, body


def assert_node_error(body: dict, node_id: str, class_type: str, message: str) -> None:
    errors = body["node_errors"]
    assert list(errors) == [node_id], json.dumps(errors)[:2000]
    assert errors[node_id]["class_type"] == class_type
    details = [error["details"] for error in errors[node_id]["errors"]]
    assert details and all(message in detail for detail in details), details


def uce_outputs(prompt: dict) -> list[str]:
    """The output nodes that depend on the UCE node: the edited branch and the report."""
    saves = wf.saves_by_branch(prompt)
    return [saves["edited"], *wf.nodes_of_type(prompt, "PreviewAny")] if "edited" in saves else wf.nodes_of_type(prompt, "PreviewAny")


def test_empty_concepts_are_rejected_with_the_node_named(server, object_info, checkpoint):
    prompt = artist_prompt(object_info, checkpoint)
    (uce,) = wf.nodes_of_type(prompt, "UCEEraseConcepts")
    prompt[uce]["inputs"]["concepts"] = "  \n "
    message = "concepts: write at least one concept, one per line (it is empty)"

    # only outputs that need the edit: nothing can run, HTTP 400
    status, body = post_prompt(server, wf.prune_to(prompt, uce_outputs(prompt)))
    assert status == 400 and body["error"]["type"] == "prompt_outputs_failed_validation", body
    assert_node_error(body, uce, "UCEEraseConcepts", message)

    # the whole example: ComfyUI queues the branch that does not need the edit and names the bad node
    status, body = post_prompt(server, prompt)
    assert status == 200, body
    assert_node_error(body, uce, "UCEEraseConcepts", message)
    entry = server.wait_history(body["prompt_id"])
    assert entry["status"]["status_str"] == "success"
    assert set(entry["outputs"]) == {wf.saves_by_branch(prompt)["unedited"]}


def test_save_edit_prefix_outside_the_lora_folder_is_refused_at_queue_time(server, object_info, checkpoint):
    prompt = derive(WORKFLOW_DIR / "uce_erase_then_save_lora.json", object_info, checkpoint)
    (save_id,) = wf.nodes_of_type(prompt, "UCESaveEdit")
    prompt[save_id]["inputs"]["filename_prefix"] = "../escape"
    status, body = post_prompt(server, wf.prune_to(prompt, [save_id]))
    assert status == 400 and body["error"]["type"] == "prompt_outputs_failed_validation", body
    assert_node_error(body, save_id, "UCESaveEdit", "filename_prefix: '../escape' leaves the models/loras folder")
    assert not list(server.base_dir.rglob("escape*"))


@pytest.mark.parametrize(
    "weights, message",
    [
        ("-0.03, oops\n0.03, -0.03\n-0.04, 0.04", "attribute_weights: must be numbers separated by commas or new lines"),
        ("0.1", "attribute_weights: needs one number per attribute (2: male, female), got 1"),
        ("0.1, 0.1\n0.2, 0.2", "attribute_weights: 2 lines for 3 professions"),
    ],
)
def test_malformed_debias_weights_are_rejected(weights, message, server, object_info, checkpoint):
    prompt = derive(WORKFLOW_DIR / "uce_debias_professions.json", object_info, checkpoint)
    (uce,) = wf.nodes_of_type(prompt, "UCEDebias")
    prompt[uce]["inputs"]["attribute_weights"] = weights
    status, body = post_prompt(server, wf.prune_to(prompt, uce_outputs(prompt)))
    assert status == 400, body
    assert_node_error(body, uce, "UCEDebias", message)


def test_clip_that_does_not_match_the_model_is_an_execution_error(server, object_info, checkpoint, baseline):
    """An SD2.x-family UNet (context 1024) edited with the checkpoint's SD1.5 CLIP (768)."""
    prompt = artist_prompt(object_info, checkpoint)
    (uce,) = wf.nodes_of_type(prompt, "UCEEraseConcepts")
    (report,) = wf.nodes_of_type(prompt, "PreviewAny")
    prompt["900"] = {"class_type": "UNETLoader", "inputs": {"unet_name": SD2_UNET_NAME, "weight_dtype": "default"}}
    prompt[uce]["inputs"]["model"] = ["900", 0]
    entry = server.run_prompt(wf.prune_to(prompt, [report]))
    assert entry["status"]["status_str"] == "error"
    (error,) = status_messages(entry, "execution_error")
    assert error["node_id"] == uce and error["node_type"] == "UCEEraseConcepts"
    assert re.search(
        r"the CLIP gives 768-wide text conditioning but this SD2\w* MODEL's cross-attention expects 1024: "
        r"the CLIP does not match the MODEL", error["exception_message"]
    ), error["exception_message"]


def test_server_still_runs_a_good_prompt_after_errors(server, object_info, checkpoint, baseline):
    test_clip_that_does_not_match_the_model_is_an_execution_error(server, object_info, checkpoint, baseline)
    prompt = artist_prompt(object_info, checkpoint)
    saves = wf.saves_by_branch(prompt)
    run_ok(server, wf.prune_to(prompt, [saves["edited"]]))


# -- no leaking of patches between prompts -------------------------------------------------------
def test_edits_of_one_loaded_model_do_not_leak(server, object_info, checkpoint, baseline):
    prompt = artist_prompt(object_info, checkpoint)
    saves = wf.saves_by_branch(prompt)
    (uce,) = wf.nodes_of_type(prompt, "UCEEraseConcepts")
    (loader,) = wf.nodes_of_type(prompt, "CheckpointLoaderSimple")
    sampler_of = {branch: prompt[prompt[save]["inputs"]["images"][0]]["inputs"]["samples"][0] for branch, save in saves.items()}

    def unedited_run(tag):
        graph = wf.prune_to(prompt, [saves["unedited"]])
        graph[saves["unedited"]]["inputs"]["filename_prefix"] = f"leak/unedited_{tag}"
        return graph

    def edited_run(tag, **uce_inputs):
        graph = wf.prune_to(prompt, [saves["edited"]])
        graph[uce]["inputs"].update(uce_inputs)
        graph[saves["edited"]]["inputs"]["filename_prefix"] = f"leak/edited_{tag}"
        return graph

    first = run_ok(server, unedited_run("first"))
    edit_a = dict(concepts="Van Gogh", guide="art")
    edit_b = dict(concepts="Van Gogh\nstarry night", guide="a photograph of a city street", erase_scale=2.0)
    a = run_ok(server, edited_run("a", **edit_a))
    b = run_ok(server, edited_run("b", **edit_b))
    a_again = run_ok(server, edited_run("a_again", **edit_a))
    last = run_ok(server, unedited_run("last"))

    # one loaded model all along (the loader's output came from the cache), yet the edit and the
    # sampling really ran again in each prompt
    for entry in (a, b, a_again, last):
        assert loader in cached_nodes(entry)
    for entry in (a, b, a_again):
        assert uce not in cached_nodes(entry) and sampler_of["edited"] not in cached_nodes(entry)
    assert sampler_of["unedited"] not in cached_nodes(last)

    image_a, image_b = pixels(server, a, saves["edited"]), pixels(server, b, saves["edited"])
    assert np.abs(image_a.astype(int) - image_b.astype(int)).mean() > 1.0, "two different edits gave the same image"
    assert np.array_equal(pixels(server, a_again, saves["edited"]), image_a), "re-running edit A changed its image"
    for entry in (first, last):
        assert np.array_equal(pixels(server, entry, saves["unedited"]), baseline), "the unedited model changed"
    assert np.abs(image_a.astype(int) - baseline.astype(int)).mean() > 1.0
