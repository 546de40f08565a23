"""What a hostile or careless API client can send, against a real headless ComfyUI server with the pack.

Every bad value is refused at POST /prompt (HTTP 400) naming the node and the input, quickly, whatever
its size; the server then still serves, and the unedited model still samples bit-identical images.
Interrupting an edit and queueing edits back to back give exactly the images of clean runs.
"""

from __future__ import annotations

import json
import time

import numpy as np
import pytest
from uce_devtools import tiny_models
from uce_devtools import workflow_api as wf
from uce_devtools.paths import REPO_ROOT
from uce_devtools.server import ComfyServer, artifacts_dir, status_messages

PACK_NAME = "comfyui-uce"
WORKFLOW = REPO_ROOT / "workflows" / "uce_erase_artist_style.json"
TINY_SIZE, TINY_STEPS = 64, 2
SHORT_PRESERVE = "Claude Monet\nRembrandt"
INTERRUPT_AFTER_SECONDS = 6
ANSWER_SECONDS = 10  # a refusal of any input must come this fast, even for a 10 MB text


@pytest.fixture(scope="module")
def checkpoint(comfy):
    return tiny_models.tiny_sd15_checkpoint()


@pytest.fixture(scope="module")
def preserve_cache(tmp_path_factory):
    return tmp_path_factory.mktemp("uce_preserve_cache")


@pytest.fixture(scope="module")
def server(tmp_path_factory, checkpoint, preserve_cache):
    base = tmp_path_factory.mktemp("hostile_server")
    srv = ComfyServer.start(
        base, checkpoints=[checkpoint], pack_name=PACK_NAME, timeout=240,
        env={"UCE_PRESERVE_CACHE_DIR": str(preserve_cache)},
    )
    try:
        yield srv
    finally:
        srv.stop()
        (artifacts_dir("hostile") / "comfyui-server.log").write_text(srv.log_text(), encoding="utf-8")


@pytest.fixture(scope="module")
def prompt(server, checkpoint) -> dict:
    """The artist example as an API prompt, on the tiny model, with a short preserve list."""
    graph = wf.derive_prompt(WORKFLOW, server.object_info())
    wf.set_inputs(graph, "CheckpointLoaderSimple", ckpt_name=checkpoint.name)
    wf.set_inputs(graph, "EmptyLatentImage", width=TINY_SIZE, height=TINY_SIZE)
    wf.set_inputs(graph, "KSampler", steps=TINY_STEPS)
    wf.fill_empty(graph, "UCEEraseConcepts", "preserve", SHORT_PRESERVE)
    return graph


@pytest.fixture(scope="module")
def uce(prompt) -> str:
    (node,) = wf.nodes_of_type(prompt, "UCEEraseConcepts")
    return node


@pytest.fixture(scope="module")
def baseline(server, prompt) -> np.ndarray:
    """The unedited model's image, before anything else ran on this server."""
    return unedited_image(server, prompt, "baseline")


def edited_graph(prompt: dict, tag: str, **uce_inputs) -> dict:
    saves = wf.saves_by_branch(prompt)
    graph = wf.prune_to(prompt, [saves["edited"]])
    (uce,) = wf.nodes_of_type(graph, "UCEEraseConcepts")
    graph[uce]["inputs"].update(uce_inputs)
    graph[saves["edited"]]["inputs"]["filename_prefix"] = f"hostile/{tag}"
    return graph


def unedited_image(server: ComfyServer, prompt: dict, tag: str) -> np.ndarray:
    save = wf.saves_by_branch(prompt)["unedited"]
    graph = wf.prune_to(prompt, [save])
    graph[save]["inputs"]["filename_prefix"] = f"hostile/unedited_{tag}"
    return image(server, run_ok(server, graph), save)


def run_ok(server: ComfyServer, graph: dict, timeout: float = 300) -> dict:
    entry = server.run_prompt(graph, timeout=timeout)
    errors = status_messages(entry, "execution_error")
    assert entry["status"]["status_str"] == "success" and not errors, json.dumps(errors)[:3000]
    return entry


def image(server: ComfyServer, entry: dict, save_id: str | None = None) -> np.ndarray:
    from PIL import Image

    if save_id is None:  # the one image output (the UCE node's output is its report)
        (save_id,) = [node for node, output in entry["outputs"].items() if "images" in output]
    (path,) = server.output_files(entry, save_id)
    return np.asarray(Image.open(path).convert("RGB"))


def free_everything(server: ComfyServer) -> None:
    """Unload the models and drop ComfyUI's cached node outputs: the next prompt loads and runs all anew."""
    status, _ = server.post_json("/free", {"unload_models": True, "free_memory": True})
    assert status == 200


# -- bad values: refused at /prompt, naming the input --------------------------------------------
BAD_VALUES = [
    ("strength", float("nan"), "strength: must be a finite number from 0 to 2, got nan"),
    ("strength", "nan", "strength: must be a finite number from 0 to 2, got nan"),
    ("erase_scale", float("nan"), "erase_scale: must be a finite number from 0 to 100, got nan"),
    ("lamb", float("inf"), "lamb: must be a finite number from 1e-05 to 100, got inf"),
    ("preserve_scale", "-Infinity", "preserve_scale: must be a finite number from -1 to 100, got -inf"),
    ("lamb", 1000.0, "lamb: 1000 is out of range: use a number from 1e-05 to 100"),
    ("concepts", "  \n ", "concepts: write at least one concept, one per line (it is empty)"),
    ("guide", "a\nb\nc", "guide: 3 lines for 2 concepts"),
    ("concepts", "Van Gogh " * 1_200_000, "concepts: is 10,800,000 characters, more than the 1,000,000"),
    ("preserve", "cat\n" + "x" * 100_000, "preserve: line 2 is 100,000 characters, longer than any text encoder reads"),
]


@pytest.mark.parametrize("name, value, message", BAD_VALUES, ids=[f"{n}-{str(v)[:12]!r}" for n, v, _ in BAD_VALUES])
def test_a_bad_value_is_refused_naming_the_input(server, prompt, uce, name, value, message):
    values = {"concepts": "Van Gogh\nstarry night"} if name == "guide" else {}
    graph = edited_graph(prompt, "bad", **values, **{name: value})
    started = time.monotonic()
    status, body = server.post_json("/prompt", {"prompt": graph, "client_id": server.client_id}, timeout=60)
    answered = time.monotonic() - started
    assert status == 400 and body["error"]["type"] == "prompt_outputs_failed_validation", str(body)[:2000]
    assert list(body["node_errors"]) == [uce]
    details = [error["details"] for error in body["node_errors"][uce]["errors"]]
    assert any(message in detail for detail in details), details
    assert all(len(detail) < 1000 for detail in details), "the error quotes the whole input"
    assert answered < ANSWER_SECONDS


def test_a_list_where_text_belongs_is_refused_with_a_clear_message(server, prompt, uce):
    """A JSON list is ComfyUI's link syntax: ComfyUI refuses it as a bad link, and the node's check says
    what the input needs (no attribute error from deep inside)."""
    graph = edited_graph(prompt, "bad", concepts=["Van Gogh"])
    status, body = server.post_json("/prompt", {"prompt": graph, "client_id": server.client_id})
    assert status == 400, str(body)[:2000]
    errors = body["node_errors"][uce]["errors"]
    assert errors[0]["type"] == "bad_linked_input" and errors[0]["extra_info"]["input_name"] == "concepts"
    messages = {error["details"].split(" - ", 1)[1] for error in errors[1:]}
    assert messages == {"concepts: must be text with one entry per line, got a list: join the entries with new lines"}


def test_after_bad_prompts_the_server_serves_and_the_model_is_unchanged(server, prompt, baseline):
    for name, value, _ in BAD_VALUES:
        server.post_json("/prompt", {"prompt": edited_graph(prompt, "bad", **{name: value}), "client_id": server.client_id})
    started = time.monotonic()
    assert np.array_equal(unedited_image(server, prompt, "after_bad"), baseline)
    assert time.monotonic() - started < 60
    # /history holds no huge entry: refused prompts are not queued at all
    assert len(json.dumps(server.get_json("/history"))) < 1_000_000


# -- interrupts and back-to-back edits give exactly the images of clean runs ------------------------
def wait_until_running(server: ComfyServer, prompt_id: str, timeout: float = 60) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        running = server.get_json("/queue")["queue_running"]
        if any(item[1] == prompt_id for item in running):
            return
        time.sleep(0.1)
    raise AssertionError(f"prompt {prompt_id} did not start within {timeout:.0f} s")


def test_an_edit_interrupted_while_encoding_then_rerun_gives_the_clean_image(server, prompt, uce, baseline, preserve_cache):
    things = ("house", "tree", "boat", "dog", "river", "bridge", "cloud", "flower")
    places = ("field", "city", "forest", "harbour", "village", "garden", "valley", "desert", "mountain", "street")
    preserve = "\n".join(f"a {kind} of a {thing} in a {place}" for kind in ("painting", "photo", "drawing")
                         for thing in things for place in places)  # 240 prompts: several encoding batches
    edit = dict(concepts="Van Gogh", preserve=preserve)
    clean = image(server, run_ok(server, edited_graph(prompt, "clean", **edit)))

    free_everything(server)  # a new CLIP object: no encoded row in RAM is reused
    for path in preserve_cache.rglob("*"):
        if path.is_file():
            path.unlink()  # and no preserve Gram from disk either
    prompt_id = server.queue_prompt(edited_graph(prompt, "interrupted", **edit))
    wait_until_running(server, prompt_id)
    time.sleep(INTERRUPT_AFTER_SECONDS)  # loading takes ~2 s, checking the prompts ~1 s, encoding them ~50 s
    status, _ = server.post_json("/interrupt", {})
    assert status == 200
    interrupted = server.wait_history(prompt_id, timeout=60)
    assert interrupted["status"]["status_str"] == "error"
    (where,) = status_messages(interrupted, "execution_interrupted")
    assert where["node_id"] == uce  # the edit itself was interrupted, not the loader

    rerun = image(server, run_ok(server, edited_graph(prompt, "rerun", **edit)))
    assert np.array_equal(rerun, clean), "re-running an interrupted edit changed its image"
    assert np.array_equal(unedited_image(server, prompt, "after_interrupt"), baseline)


def test_edits_queued_back_to_back_give_the_images_of_clean_runs(server, prompt, baseline):
    edit_a = dict(concepts="Van Gogh", guide="art")
    edit_b = dict(concepts="Van Gogh\nstarry night", guide="a photograph of a city street", erase_scale=2.0, strength=0.7)
    free_everything(server)
    queued = [server.queue_prompt(edited_graph(prompt, f"queued_{tag}", **edit)) for tag, edit in (("a", edit_a), ("b", edit_b))]
    together = [image(server, server.wait_history(prompt_id)) for prompt_id in queued]

    alone = []
    for tag, edit in (("a", edit_a), ("b", edit_b)):
        free_everything(server)
        alone.append(image(server, run_ok(server, edited_graph(prompt, f"alone_{tag}", **edit))))
    assert np.array_equal(together[0], alone[0]) and np.array_equal(together[1], alone[1])
    assert not np.array_equal(alone[0], alone[1])
    assert np.array_equal(unedited_image(server, prompt, "after_queue"), baseline)
