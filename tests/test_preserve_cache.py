"""The preserve set's disk store: a restart reads exactly what encoding gave, anything that changes rows misses,
bad files are never trusted, the folder stays within its bound and only complete results are written, atomically."""

from __future__ import annotations

import copy
import json
import os

import pytest
import safetensors.torch
import torch
from uce_devtools.graph import run_node

PROMPTS = ["a quiet harbour at dawn", "Frida Kahlo", "ink drawing of a fox", ""]
SAMPLE_ROWS = 512


class Stopped(Exception):
    pass


@pytest.fixture
def modules(pack):
    nodes = pack.nodes
    return nodes.preserve_set, nodes.preserve_cache, nodes.text_cache, nodes.model_weights


@pytest.fixture
def store_dir(tmp_path, monkeypatch, modules):
    """The store in a fresh folder, used for lists of any length; RAM memos cleared before and after."""
    preserve_set, _, _, _ = modules
    folder = tmp_path / "preserve"
    monkeypatch.setenv("UCE_PRESERVE_CACHE_DIR", str(folder))
    monkeypatch.setenv("UCE_PRESERVE_CACHE_MB", "64")
    monkeypatch.setattr(preserve_set, "DISK_MIN_PROMPTS", 1)
    restart(modules)
    yield folder
    restart(modules)


def restart(modules, fingerprints=True):
    """What a ComfyUI restart forgets: the preserve memo, the encoded rows and the fingerprints."""
    preserve_set, preserve_cache, text_cache, _ = modules
    preserve_set.clear_memo()
    text_cache.ROW_CACHE.clear()
    if fingerprints:
        preserve_cache.clear_memo()


@pytest.fixture
def encodes(monkeypatch):
    """count(clip): from now on, how many times that CLIP's encoder runs (counting restarts at each call)."""
    originals = {}

    def count(clip):
        original = originals.setdefault(id(clip), clip.encode_from_tokens)
        calls = [0]

        def counted(*args, **kwargs):
            calls[0] += 1
            return original(*args, **kwargs)

        monkeypatch.setattr(clip, "encode_from_tokens", counted)
        return lambda: calls[0]

    return count


def preserve(modules, model, clip, texts=PROMPTS, token_mode="paper", progress=None):
    preserve_set, _, _, model_weights = modules
    family = model_weights.family_of(model)
    groups = model_weights.text_map_groups(model, family, "keys+values", False, "cpu")
    with torch.inference_mode():
        return preserve_set.preserve_sets(
            clip, family, groups, texts, token_mode, torch.device("cpu"), SAMPLE_ROWS, progress
        )


def stored_files(folder):
    return sorted(p.name for p in folder.iterdir()) if folder.exists() else []


def assert_identical(got, expected):
    assert len(got) == len(expected)
    for a, b in zip(got, expected):
        assert a.prompts == b.prompts and a.gram.rows == b.gram.rows and a.gram.chunk_dtype == b.gram.chunk_dtype
        assert a.gram.gram.dtype == torch.float64 and torch.equal(a.gram.gram, b.gram.gram)
        assert a.sample.dtype == b.sample.dtype and torch.equal(a.sample, b.sample)


@pytest.fixture(scope="module")
def clip_loaded_again(sd15):
    """The tiny checkpoint's CLIP loaded a second time: new objects, as after a restart (weights ComfyUI
    does not find in the checkpoint, such as CLIP-L's text_projection, hold other bytes)."""
    import comfy.sd
    from uce_devtools import tiny_models

    loaded = comfy.sd.load_checkpoint_guess_config(
        str(tiny_models.tiny_sd15_checkpoint()), output_vae=False, output_model=False
    )
    return loaded[1]


def test_after_a_restart_the_disk_gives_the_same_numbers_and_nothing_is_encoded(
    modules, sd15, clip_loaded_again, store_dir, encodes
):
    model, clip, _ = sd15
    first = preserve(modules, model, clip)
    files = stored_files(store_dir)
    assert len(files) == len(first) and all(name.endswith(".safetensors") for name in files)

    restart(modules)
    calls = encodes(clip_loaded_again)
    again = preserve(modules, model, clip_loaded_again)
    assert calls() == 0
    assert_identical(again, first)
    assert modules[2].ROW_CACHE.misses == 0
    assert stored_files(store_dir) == files


def test_what_changes_the_rows_misses(modules, sd15, store_dir, encodes):
    model, clip, _ = sd15
    preserve(modules, model, clip)
    skipped = run_node("CLIPSetLastLayer", clip=clip, stop_at_clip_layer=-2)[0]
    lora = clip.clone()
    key = next(k for k in clip.patcher.model_state_dict() if k.endswith("layers.3.self_attn.v_proj.weight"))
    shape = clip.patcher.model_state_dict()[key].shape
    lora.add_patches({key: ("diff", (1e-3 * torch.randn(shape, generator=torch.Generator().manual_seed(1)),))})
    variants = {
        "another prompt list": dict(clip=clip, texts=PROMPTS[:-2] + ["a lighthouse", ""]),
        "the same prompts in another order": dict(clip=clip, texts=PROMPTS[::-1]),
        "another token mode": dict(clip=clip, token_mode="last_token"),
        "clip skip": dict(clip=skipped),
        "a LoRA on the text encoder": dict(clip=lora),
    }
    for name, values in variants.items():
        restart(modules, fingerprints=False)
        before = stored_files(store_dir)
        calls = encodes(values["clip"])
        preserve(modules, model, **values)
        assert calls() > 0, f"{name} was read from the disk"
        assert len(stored_files(store_dir)) == len(before) + 1, f"{name} did not get its own entry"


def test_fingerprints_tell_fine_tunes_and_loras_apart(modules, sd15):
    _, preserve_cache, _, _ = modules
    _, clip, _ = sd15
    base = clip.cond_stage_model
    name, weight = next((n, w) for n, w in base.state_dict().items() if n.endswith("layers.5.mlp.fc1.weight"))

    def fine_tune(change):
        tuned = copy.deepcopy(base)
        with torch.no_grad():
            change(tuned.state_dict()[name].view(-1))
        return preserve_cache.weights_fingerprint(tuned, memo=False)

    def one_ulp(flat):
        flat[1234] = torch.nextafter(flat[1234], torch.tensor(float("inf"), dtype=flat.dtype))

    def swap(flat):  # same sum and sum of squares
        flat[[10, 20]] = flat[[20, 10]].clone()

    original = preserve_cache.weights_fingerprint(base, memo=False)
    assert fine_tune(lambda flat: None) == original
    assert weight.view(-1)[10] != weight.view(-1)[20]
    tuned = {fine_tune(one_ulp), fine_tune(swap)}
    assert len(tuned) == 2 and original not in tuned

    lora = clip.clone()
    lora.add_patches({name: ("diff", (torch.full(weight.shape, 1e-4),))})
    stronger = clip.clone()
    stronger.add_patches({name: ("diff", (torch.full(weight.shape, 1e-4),))}, strength_patch=0.5)
    prints = [preserve_cache.encoder_fingerprint(c) for c in (clip, clip.clone(), lora, stronger)]
    assert prints[0] == prints[1] and len(set(prints[1:])) == 3


def test_the_fingerprint_reads_base_weights_while_a_lora_is_patched_in(modules, sd15):
    import comfy.model_management

    _, preserve_cache, _, _ = modules
    _, clip, _ = sd15
    lora = clip.clone()
    key = next(k for k in clip.patcher.model_state_dict() if k.endswith("layers.2.mlp.fc2.weight"))
    lora.add_patches({key: ("diff", (torch.full(clip.patcher.model_state_dict()[key].shape, 0.01),))})
    preserve_cache.clear_memo()
    unloaded = preserve_cache.encoder_fingerprint(lora)
    try:
        comfy.model_management.load_models_gpu([lora.patcher], force_full_load=True)
        assert key in lora.patcher.backup  # the LoRA is in the live weights now
        preserve_cache.clear_memo()
        assert preserve_cache.encoder_fingerprint(lora) == unloaded
        assert preserve_cache.weights_fingerprint(clip.cond_stage_model, clip.patcher.backup, memo=False) == (
            preserve_cache.weights_fingerprint(clip.cond_stage_model, lora.patcher.backup, memo=False)
        )
    finally:
        comfy.model_management.load_models_gpu([clip.patcher], force_full_load=True)
    assert key not in clip.patcher.backup
    preserve_cache.clear_memo()
    assert preserve_cache.encoder_fingerprint(lora) == unloaded


DAMAGES = ["truncated", "garbage", "another key", "flipped byte", "wrong shape"]


def test_a_bad_file_is_deleted_and_rebuilt(modules, sd15, store_dir, encodes):
    model, clip, _ = sd15
    first = preserve(modules, model, clip)
    (name,) = stored_files(store_dir)
    path = store_dir / name
    data = path.read_bytes()
    for damage in DAMAGES:
        damage_file(modules, path, data, damage)
        restart(modules, fingerprints=False)
        calls = encodes(clip)
        rebuilt = preserve(modules, model, clip)
        assert calls() > 0, damage
        assert_identical(rebuilt, first)
        assert same_file_contents(path.read_bytes(), data), damage  # written again, whole

    restart(modules)
    calls = encodes(clip)
    assert_identical(preserve(modules, model, clip), first)
    assert calls() == 0


def damage_file(modules, path, data: bytes, damage: str) -> None:
    key_field = modules[1].KEY_FIELD
    if damage == "truncated":
        path.write_bytes(data[: len(data) // 2])
    elif damage == "garbage":
        path.write_bytes(os.urandom(4096))
    elif damage == "flipped byte":  # in the sample's data: only the checksum tells
        flipped = bytearray(data)
        flipped[-100] ^= 0x01
        path.write_bytes(bytes(flipped))
    else:  # valid safetensors files that do not belong here
        tensors = safetensors.torch.load(data)
        metadata = safetensors.safe_open(str(path), "pt").metadata()
        if damage == "another key":
            metadata[key_field] = metadata[key_field].replace('"paper"', '"last_token"')
        else:
            tensors["gram"] = tensors["gram"][:-1, :-1].contiguous()
            metadata["content_sha256"] = modules[1]._content_digest(tensors)
        safetensors.torch.save_file(tensors, str(path), metadata=metadata)


def same_file_contents(a: bytes, b: bytes) -> bool:
    """Equal tensors and metadata (the header's key order may differ)."""
    ta, tb = safetensors.torch.load(a), safetensors.torch.load(b)
    header = lambda data: json.loads(data[8 : 8 + int.from_bytes(data[:8], "little")])["__metadata__"]  # noqa: E731
    return ta.keys() == tb.keys() and all(torch.equal(ta[k], tb[k]) for k in ta) and header(a) == header(b)


def entry(modules, seed, width=32):
    generator = torch.Generator().manual_seed(seed)
    rows = torch.randn(10, width, generator=generator)
    return modules[1].Entry(rows.double().T @ rows.double(), 10, rows[:4].clone(), 3)


def key_of(seed):
    return {"test": seed}


def test_the_folder_keeps_its_bound_least_recently_used_first(modules, tmp_path):
    preserve_cache = modules[1]
    size = len(preserve_cache._encode(preserve_cache._key_text(key_of(0)), entry(modules, 0)))
    store = preserve_cache.DiskStore(tmp_path, max_bytes=3 * size + size // 2)
    for seed in range(4):
        assert store.save(key_of(seed), entry(modules, seed))
        os.utime(store.path_of(key_of(seed)), (1000 + seed, 1000 + seed))
    assert store.total_bytes() <= store.max_bytes and len(stored_files(tmp_path)) == 3
    assert store.load(key_of(0), 32, "cpu") is None  # the oldest went first

    assert store.load(key_of(1), 32, "cpu") is not None  # now the most recently used
    assert store.save(key_of(4), entry(modules, 4))
    assert [store.load(key_of(s), 32, "cpu") is not None for s in range(1, 5)] == [True, False, True, True]
    assert store.total_bytes() <= store.max_bytes

    small = preserve_cache.DiskStore(tmp_path / "small", max_bytes=size - 1)
    assert not small.save(key_of(0), entry(modules, 0))  # larger than the whole bound: not stored
    assert stored_files(tmp_path / "small") == []


def test_size_zero_turns_the_store_off(modules, sd15, store_dir, monkeypatch):
    monkeypatch.setenv("UCE_PRESERVE_CACHE_MB", "0")
    assert modules[1].default_store() is None
    preserve(modules, *sd15[:2])
    assert stored_files(store_dir) == []


def test_an_interrupted_accumulation_writes_nothing(modules, sd15, store_dir):
    model, clip, _ = sd15

    def interrupt(done, total):  # as ComfyUI's cancel button, at the last progress report
        raise Stopped()

    with pytest.raises(Stopped):
        preserve(modules, model, clip, progress=interrupt)
    assert stored_files(store_dir) == []


def test_a_failed_write_leaves_no_file_and_the_edit_goes_on(modules, sd15, store_dir, monkeypatch, encodes):
    model, clip, _ = sd15
    preserve_cache = modules[1]
    real_write = preserve_cache._write_all

    def fail_halfway(handle, data):
        real_write(handle, data[: len(data) // 2])
        raise OSError("disk full")

    monkeypatch.setattr(preserve_cache, "_write_all", fail_halfway)
    first = preserve(modules, model, clip)
    assert stored_files(store_dir) == []  # neither the entry nor its temporary file

    monkeypatch.setattr(preserve_cache, "_write_all", real_write)
    restart(modules)
    assert_identical(preserve(modules, model, clip), first)
    (name,) = stored_files(store_dir)
    good = (store_dir / name).read_bytes()

    # A failing rewrite of an existing entry leaves the old file whole.
    monkeypatch.setattr(preserve_cache, "_write_all", fail_halfway)
    store = preserve_cache.default_store()
    key = json.loads(safetensors.safe_open(str(store_dir / name), "pt").metadata()[preserve_cache.KEY_FIELD])
    assert store.path_of(key).name == name
    assert not store.save(key, entry(modules, 0, width=768))
    assert stored_files(store_dir) == [name] and (store_dir / name).read_bytes() == good


def test_a_node_edit_after_a_restart_is_the_same_edit(modules, sd15, store_dir, encodes):
    model, clip, _ = sd15
    values = dict(
        concepts="Claude Monet", concept_type="custom", guide="art", preserve="\n".join(PROMPTS[:-1]),
        expand_prompts=False, erase_scale=1.0, preserve_scale=-1.0, lamb=0.5, token_mode="paper",
        projections="keys+values", strength=1.0,
    )
    with torch.inference_mode():
        first = run_node("UCEEraseConcepts", model=model, clip=clip, **values)[0]
        restart(modules)
        calls = encodes(clip)
        again, report = run_node("UCEEraseConcepts", model=model, clip=clip, **values)[:2]
    assert calls() > 0 and modules[2].ROW_CACHE.misses == 2  # the edited prompt and its guide; the preserve list: disk
    assert f"preserve: {len(PROMPTS)} prompts" in report
    assert first.patches.keys() == again.patches.keys()
    for key in first.patches:
        assert patch_tensors_equal(first.patches[key], again.patches[key]), key


def patch_tensors_equal(a, b) -> bool:
    if isinstance(a, torch.Tensor):
        return isinstance(b, torch.Tensor) and a.dtype == b.dtype and torch.equal(a, b)
    if isinstance(a, (list, tuple)):
        return type(a) is type(b) and len(a) == len(b) and all(patch_tensors_equal(x, y) for x, y in zip(a, b))
    if hasattr(a, "__dict__") and not callable(a):
        return type(a) is type(b) and patch_tensors_equal(list(vars(a).values()), list(vars(b).values()))
    return a == b
