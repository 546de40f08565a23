"""UCE Save Edit inside a real ComfyUI (CPU): the saved LoRA file, loaded by ComfyUI's own LoraLoaderModelOnly
(and by diffusers), gives the UCE node's MODEL; it stacks with other LoRAs; files are never overwritten.

Weights are compared as ComfyUI really loads them for sampling (graph.live_weights). Nothing is mocked.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import safetensors
import safetensors.torch
import torch
from test_nodes import run_uce_outputs
from uce_devtools import tiny_models
from uce_devtools.graph import live_weights, run_node

PRESERVE = "Claude Monet\nRembrandt"
# float32 files: the loaded weights agree with the UCE MODEL to float32 rounding of W + ΔW
TOLERANCE = {"rtol": 0, "atol": 2e-6}


@pytest.fixture(scope="module")
def lora_dir(comfy, tmp_path_factory):
    """A fresh models/loras folder, first in ComfyUI's list (where UCE Save Edit writes) for this module."""
    import folder_paths

    folder = tmp_path_factory.mktemp("loras")
    paths, extensions = folder_paths.folder_names_and_paths["loras"]
    folder_paths.folder_names_and_paths["loras"] = ([str(folder.resolve()), *paths], extensions)
    try:
        yield folder.resolve()
    finally:
        folder_paths.folder_names_and_paths["loras"] = (paths, extensions)


@pytest.fixture(scope="module")
def low_rank_edit(pack, sd15):
    """(UCE MODEL, edit) of an artist erased with few rows (low-rank updates) at strength 0.7."""
    model, clip, _ = sd15
    edited, _, edit = run_uce_outputs(
        pack, "UCEEraseConcepts", model, clip, concepts="Van Gogh", preserve=PRESERVE, expand_prompts=False,
        token_mode="last_token", strength=0.7,
    )
    return edited, edit


@pytest.fixture(scope="module")
def dense_edit(pack, sd15):
    """(UCE MODEL, edit) of two artists with their templates in paper mode: enough rows for dense updates."""
    model, clip, _ = sd15
    edited, _, edit = run_uce_outputs(
        pack, "UCEEraseConcepts", model, clip, concepts="Van Gogh\nKelly McKernan", preserve=PRESERVE,
        expand_prompts=True, token_mode="paper", strength=1.2,
    )
    return edited, edit


def save(pack, edit, prefix="uce/test", **values) -> tuple[str, str]:
    """(lora name, report) of UCE Save Edit run on ``edit``."""
    inputs = {"filename_prefix": prefix, "dense_rank": 0, "dense_energy": 0.0, **values}
    node = pack.nodes.NODE_CLASSES["UCESaveEdit"]
    with torch.inference_mode():
        output = node.execute(edit=edit, **inputs)
    return output.args[0], output.ui.as_dict()["text"][0]


def lora_model(model, name, strength=1.0):
    return run_node("LoraLoaderModelOnly", model=model, lora_name=name, strength_model=strength)[0]


def kinds(edit):
    return {type(delta).__name__ for delta in edit.deltas.values()}


def assert_same_weights(actual_model, expected_model, keys, **tolerance):
    actual, expected = live_weights(actual_model, keys), live_weights(expected_model, keys)
    for key in keys:
        torch.testing.assert_close(actual[key], expected[key], **(tolerance or TOLERANCE), msg=key)


# -- round trips through ComfyUI's LoraLoaderModelOnly ----------------------------------------------
def test_low_rank_edit_loads_back_as_the_uce_model(pack, sd15, lora_dir, low_rank_edit):
    edited, edit = low_rank_edit
    assert kinds(edit) == {"LowRankDelta"}
    name, report = save(pack, edit)
    assert (lora_dir / name).is_file() and name.startswith("uce/test_") and name.endswith("_.safetensors")
    import folder_paths

    assert name in folder_paths.get_filename_list("loras")  # as LoraLoaderModelOnly lists it
    loaded = lora_model(sd15[0], name)
    assert_same_weights(loaded, edited, edit.keys)
    assert f"low-rank: {len(edit.keys)} weights" in report, report


def test_dense_edit_loads_back_exactly_at_full_rank(pack, sd15, lora_dir, dense_edit):
    edited, edit = dense_edit
    assert "DenseDelta" in kinds(edit), "the test needs dense updates (more rows than the width allows low rank)"
    name, report = save(pack, edit, "uce/dense")
    assert "dense: " in report and "truncation" not in report, report
    assert_same_weights(lora_model(sd15[0], name), edited, edit.keys)


def test_truncated_dense_edit_is_within_the_reported_error(pack, sd15, lora_dir, dense_edit):
    edited, edit = dense_edit
    name, report = save(pack, edit, "uce/truncated", dense_rank=16)
    metadata = safetensors.safe_open(str(lora_dir / name), "pt").metadata()
    worst = float(metadata["uce.truncation_error_max"])
    overall = float(metadata["uce.truncation_error_overall"])
    assert 0 < overall <= worst < 1 and "truncation error" in report, report
    dense_keys = [key for key, delta in edit.deltas.items() if type(delta).__name__ == "DenseDelta"]
    base = live_weights(sd15[0], dense_keys)
    uce = live_weights(edited, dense_keys)
    loaded = live_weights(lora_model(sd15[0], name), dense_keys)
    residual = total = 0.0
    for key in dense_keys:
        delta = (uce[key] - base[key]).double()
        error = (loaded[key] - uce[key]).double()
        assert error.norm() <= worst * delta.norm() * (1 + 1e-3) + 1e-5, key
        residual, total = residual + error.square().sum(), total + delta.square().sum()
    assert (residual / total).sqrt() <= overall * (1 + 1e-3) + 1e-6
    with safetensors.safe_open(str(lora_dir / name), "pt") as f:
        ranks = {f.get_tensor(k).shape[0] for k in f.keys() if k.endswith("lora_down.weight")}
    assert max(ranks) <= 16


def test_energy_threshold_picks_the_smallest_rank_reaching_it(pack):
    save_edit = pack.nodes.save_edit
    singular = torch.tensor([3.0, 2.0, 1.0, 0.5])  # energies 9, 4, 1, 0.25 of 14.25
    assert save_edit.truncation_rank(singular, 0, 9 / 14.25) == 1
    assert save_edit.truncation_rank(singular, 0, 13.5 / 14.25) == 3
    assert save_edit.truncation_rank(singular, 2, 0.999) == 2
    assert save_edit.truncation_rank(singular, 0, 1.0) == 4
    assert save_edit.truncation_rank(singular, 9, 0.0) == 4


def test_exact_factors_are_exact(pack):
    save_edit = pack.nodes.save_edit
    for shape in ((5, 3), (3, 5), (4, 4)):
        delta = torch.randn(shape)
        up, down = save_edit.exact_factors(delta)
        assert torch.equal(up @ down, delta) and up.shape[1] == min(shape)


# -- stacking with other LoRAs -------------------------------------------------------------------------
def test_saved_edit_stacks_with_another_lora(pack, sd15, lora_dir, low_rank_edit, tiny_lora_name):
    edited, edit = low_rank_edit
    name, _ = save(pack, edit, "uce/stack")
    base_model = sd15[0]
    keys = sorted(set(edit.keys) | set(tiny_models_keys(base_model)))
    base = live_weights(base_model, keys)
    uce = live_weights(edited, keys)
    lora_only = live_weights(lora_model(base_model, tiny_lora_name), keys)
    expected = {key: uce[key] + (lora_only[key] - base[key]) for key in keys}
    for model in (lora_model(edited, tiny_lora_name),  # a LoRA after the UCE node
                  lora_model(lora_model(base_model, name), tiny_lora_name),  # the saved edit next to a LoRA
                  lora_model(lora_model(base_model, tiny_lora_name), name)):
        actual = live_weights(model, keys)
        for key in keys:
            torch.testing.assert_close(actual[key], expected[key], rtol=0, atol=1e-5, msg=key)


def tiny_models_keys(model) -> list[str]:
    import re

    pattern = re.compile(tiny_models.DEFAULT_LORA_TARGETS)
    return [key for key in model.model.state_dict() if key.startswith("diffusion_model.") and pattern.search(key)]


# -- the file ---------------------------------------------------------------------------------------
def test_file_has_kohya_names_and_the_edit_in_its_metadata(pack, lora_dir, low_rank_edit):
    _, edit = low_rank_edit
    name, report = save(pack, edit, "uce/meta")
    path = lora_dir / name
    with safetensors.safe_open(str(path), "pt") as f:
        metadata = f.metadata()
        tensors = {key: f.get_tensor(key) for key in f.keys()}
    for key, value in edit.description.items():
        assert metadata[key] == value, key
    assert float(metadata["uce.saved_strength"]) == pytest.approx(0.7)
    assert metadata["ss_network_module"] == "networks.lora"
    assert metadata["ss_base_model_version"] == "sd_v1"
    assert int(metadata["ss_network_dim"]) == max(t.shape[0] for k, t in tensors.items() if k.endswith("lora_down.weight"))
    assert metadata["modelspec.architecture"] == "stable-diffusion-v1/lora"
    assert json.loads(metadata["uce.edited"]) == json.loads(edit.description["uce.edited"])
    # kohya's SD1.x names: diffusers block names, "lora_unet_" prefix, alpha = rank
    assert len(tensors) == 3 * len(edit.keys)
    assert "lora_unet_down_blocks_0_attentions_0_transformer_blocks_0_attn2_to_k.lora_up.weight" in tensors
    assert "lora_unet_mid_block_attentions_0_transformer_blocks_0_attn2_to_v.lora_down.weight" in tensors
    for key, tensor in tensors.items():
        assert tensor.dtype == torch.float32
        if key.endswith(".alpha"):
            down = tensors[key.replace(".alpha", ".lora_down.weight")]
            assert tensor.item() == down.shape[0]
    for line in (name, "float32", "low-rank:", "strength 0.7"):
        assert line in report, report


def test_sd_unet_names_match_comfyuis_diffusers_map_for_real_sd15(pack):
    """On the real SD1.5 layout, the block names read off the keys are those of ComfyUI's UNet→diffusers map."""
    import comfy.utils

    config = {"num_res_blocks": [2] * 4, "channel_mult": [1, 2, 4, 4], "transformer_depth": [1, 1, 1, 1, 1, 1, 0, 0],
              "transformer_depth_output": [0, 0, 0, 1, 1, 1, 1, 1, 1, 1, 1, 1], "transformer_depth_middle": 1}
    reference = {ldm: diffusers for diffusers, ldm in comfy.utils.unet_to_diffusers(config).items()
                 if ".attn2.to_k." in ldm}
    modules = [ldm[: -len(".weight")] for ldm in reference]
    names = pack.nodes.save_edit.unet_diffusers_names(modules)
    assert len(modules) == 16
    assert names == {ldm[: -len(".weight")]: diffusers[: -len(".weight")] for ldm, diffusers in reference.items()}


def test_a_second_save_gets_a_new_file(pack, lora_dir, low_rank_edit):
    _, edit = low_rank_edit
    first, _ = save(pack, edit, "uce/twice")
    before = (lora_dir / first).read_bytes()
    second, _ = save(pack, edit, "uce/twice")
    assert first != second and first.endswith("00001_.safetensors") and second.endswith("00002_.safetensors")
    assert (lora_dir / first).read_bytes() == before
    assert not [p for p in (lora_dir / "uce").iterdir() if p.name.startswith(".")], "a temporary file was left"


def test_existing_file_is_never_overwritten(pack, lora_dir):
    save_edit = pack.nodes.save_edit
    path = lora_dir / "taken.safetensors"
    path.write_bytes(b"not mine")
    with pytest.raises(FileExistsError):
        save_edit.write_new_file({"x": torch.zeros(1)}, {}, str(path))
    assert path.read_bytes() == b"not mine"


@pytest.mark.parametrize("prefix", ["../x", "uce/../../x", "/tmp/x", "", "  "])
def test_prefix_outside_the_lora_folder_is_refused(pack, lora_dir, low_rank_edit, prefix):
    _, edit = low_rank_edit
    listing = sorted(p for p in lora_dir.parent.rglob("*"))
    with pytest.raises(ValueError, match="filename_prefix"):
        save(pack, edit, prefix)
    assert sorted(p for p in lora_dir.parent.rglob("*")) == listing
    assert not Path("/tmp/x_00001_.safetensors").exists()


@pytest.mark.parametrize("values, message", [
    ({"filename_prefix": "../x"}, "filename_prefix: '../x' leaves the models/loras folder"),
    ({"filename_prefix": ""}, "filename_prefix: write a file name prefix"),
    ({"dense_rank": -1}, "dense_rank: "),
    ({"dense_energy": float("nan")}, "dense_energy: "),
    ({"dense_energy": 1.5}, "dense_energy: "),
])
def test_bad_values_are_refused_when_a_prompt_is_queued(pack, values, message):
    node = pack.nodes.NODE_CLASSES["UCESaveEdit"]
    answer = node.validate_inputs(**{"filename_prefix": "uce/edit", "dense_rank": 0, "dense_energy": 0.0, **values})
    assert isinstance(answer, str) and answer.startswith(message), answer
    assert node.validate_inputs(filename_prefix="uce/edit", dense_rank=4, dense_energy=0.999) is True


# -- a DiT family -------------------------------------------------------------------------------------
def test_flux_edit_round_trips_through_lora_loader(pack, lora_dir, tiny_family):
    flux = tiny_family("flux")
    edited, _, edit = run_uce_outputs(pack, "UCEEraseConcepts", flux.model, flux.clip, concepts="Van Gogh",
                                      preserve="a bicycle", expand_prompts=False, strength=0.8)
    name, _ = save(pack, edit, "uce/flux")
    with safetensors.safe_open(str(lora_dir / name), "pt") as f:
        names = list(f.keys())
        metadata = f.metadata()
    # diffusers' Flux names (what diffusers and ai-toolkit write; ComfyUI maps them), no alpha
    modules = ("context_embedder", "time_text_embed.text_embedder.linear_1")  # txt_in, vector_in.in_layer
    assert set(names) == {f"transformer.{module}.lora_{ab}.weight" for module in modules for ab in "AB"}, names
    assert metadata["uce.family"] == "Flux.1" and metadata["ss_base_model_version"] == "flux1"
    assert_same_weights(lora_model(flux.model, name), edited, edit.keys, rtol=0, atol=5e-6)


@pytest.mark.parametrize("family, family_name, pooled, key_start", [
    ("sd2", "SD2.x", "off", "lora_unet_down_blocks_"),  # kohya SD2 names: diffusers blocks
    ("sdxl", "SDXL", "on", "lora_unet_"),  # kohya SDXL names: SGM blocks, the pooled label_emb too
])
def test_other_unet_families_round_trip(pack, lora_dir, request, family, family_name, pooled, key_start):
    tiny = request.getfixturevalue(f"{family}_family")
    edited, _, edit = run_uce_outputs(pack, "UCEEraseConcepts", tiny.model, tiny.clip, concepts="Van Gogh",
                                      preserve="Claude Monet", expand_prompts=False, pooled=pooled, strength=0.9)
    name, _ = save(pack, edit, f"uce/{family}")
    with safetensors.safe_open(str(lora_dir / name), "pt") as f:
        names = list(f.keys())
        metadata = f.metadata()
    assert metadata["uce.family"] == family_name and all(key.startswith("lora_unet_") for key in names)
    assert any(key.startswith(key_start) for key in names), names[:4]
    if family == "sdxl":
        assert "lora_unet_label_emb_0_0.lora_up.weight" in names
        assert any(key.startswith("lora_unet_input_blocks_") for key in names), names[:4]
    assert_same_weights(lora_model(tiny.model, name), edited, edit.keys, rtol=0, atol=5e-6)


@pytest.mark.parametrize("family, prefix", [
    ("sd3", "transformer.context_embedder."), ("pixart_alpha", "diffusion_model."), ("hunyuan_dit", "diffusion_model."),
    ("wan21_t2v", "diffusion_model."),
])
def test_more_dit_families_round_trip(pack, lora_dir, tiny_family, family, prefix):
    tiny = tiny_family(family)
    edited, _, edit = run_uce_outputs(pack, "UCEEraseConcepts", tiny.model, tiny.clip, concepts="Van Gogh",
                                      preserve="a bicycle", expand_prompts=False, pooled="off")
    name, _ = save(pack, edit, f"uce/{family}")
    with safetensors.safe_open(str(lora_dir / name), "pt") as f:
        names = list(f.keys())
    assert all(key.startswith(prefix) and key.endswith((".lora_A.weight", ".lora_B.weight")) for key in names), names
    assert_same_weights(lora_model(tiny.model, name), edited, edit.keys, rtol=0, atol=5e-6)


# -- diffusers ------------------------------------------------------------------------------------------
def test_diffusers_loads_the_saved_sd15_edit(pack, sd15, lora_dir, low_rank_edit):
    """diffusers' own SD1.x LoRA loading (kohya conversion + PEFT) on a diffusers UNet holding the tiny
    checkpoint's weights: the fused K/V weights are the UCE MODEL's."""
    diffusers = pytest.importorskip("diffusers", reason="diffusers is a dev dependency (scripts/setup.sh)")
    pytest.importorskip("peft", reason="diffusers loads LoRAs through peft (scripts/setup.sh)")
    import comfy.utils
    from diffusers.loaders.lora_pipeline import StableDiffusionLoraLoaderMixin

    edited, edit = low_rank_edit
    name, _ = save(pack, edit, "uce/diffusers")
    model = sd15[0]
    unet_config = tiny_models.SD15_TINY_UNET_CONFIG
    # the base weights as sampled (clones share modules: read them through a load of the base MODEL)
    unet_keys = [key for key in model.model.state_dict() if key.startswith("diffusion_model.")]
    ldm_state = {key[len("diffusion_model."):]: value for key, value in live_weights(model, unet_keys).items()}
    key_map = comfy.utils.unet_to_diffusers(unet_config)  # diffusers key -> ComfyUI key
    unet = diffusers.UNet2DConditionModel(
        sample_size=32, in_channels=4, out_channels=4, layers_per_block=1, block_out_channels=(320,),
        down_block_types=("CrossAttnDownBlock2D",), up_block_types=("CrossAttnUpBlock2D",),
        cross_attention_dim=768, attention_head_dim=8,
    )
    diffusers_state = unet.state_dict()
    assert set(diffusers_state) <= set(key_map), sorted(set(diffusers_state) - set(key_map))[:5]
    converted = {key: ldm_state[key_map[key]].reshape(diffusers_state[key].shape).float() for key in diffusers_state}
    unet.load_state_dict(converted, strict=True)

    lora_path = lora_dir / name
    state_dict, network_alphas = StableDiffusionLoraLoaderMixin.lora_state_dict(str(lora_path))
    StableDiffusionLoraLoaderMixin.load_lora_into_unet(state_dict, network_alphas, unet=unet, adapter_name="uce")
    unet.fuse_lora(lora_scale=1.0)
    fused = unet.state_dict()
    inverse = {ldm: diffusers_key for diffusers_key, ldm in key_map.items()}
    expected = live_weights(edited, edit.keys)
    for key in edit.keys:
        diffusers_key = inverse[key[len("diffusion_model."):]]
        assert (expected[key] - ldm_state[key[len("diffusion_model."):]]).abs().max() > 1e-4, "the edit changes it"
        fused_key = diffusers_key if diffusers_key in fused else diffusers_key.replace(".weight", ".base_layer.weight")
        torch.testing.assert_close(fused[fused_key].float(), expected[key], rtol=0, atol=2e-6, msg=key)


def test_diffusers_loads_the_saved_sdxl_edit_with_its_pooled_map(pack, lora_dir, sdxl_family):
    """diffusers' SDXL LoRA loading (kohya SGM names, label_emb included) on a diffusers UNet holding the tiny
    SDXL model's weights: the fused K/V and add_embedding weights are the UCE MODEL's."""
    diffusers = pytest.importorskip("diffusers", reason="diffusers is a dev dependency (scripts/setup.sh)")
    pytest.importorskip("peft", reason="diffusers loads LoRAs through peft (scripts/setup.sh)")
    import comfy.utils
    from diffusers.loaders.lora_pipeline import StableDiffusionXLLoraLoaderMixin

    model = sdxl_family.model
    edited, _, edit = run_uce_outputs(pack, "UCEEraseConcepts", model, sdxl_family.clip, concepts="Van Gogh",
                                      preserve="Claude Monet", expand_prompts=False, pooled="on", strength=0.9)
    assert "diffusion_model.label_emb.0.0.weight" in edit.deltas
    name, _ = save(pack, edit, "uce/diffusers_sdxl")
    config = model.model.model_config.unet_config
    unet = diffusers.UNet2DConditionModel(
        sample_size=32, in_channels=4, out_channels=4, layers_per_block=1, block_out_channels=(320, 640),
        down_block_types=("DownBlock2D", "CrossAttnDownBlock2D"), up_block_types=("CrossAttnUpBlock2D", "UpBlock2D"),
        cross_attention_dim=2048, attention_head_dim=(5, 10), use_linear_projection=True,
        addition_embed_type="text_time", addition_time_embed_dim=256, projection_class_embeddings_input_dim=2816,
    )
    key_map = comfy.utils.unet_to_diffusers(config)
    unet_keys = [key for key in model.model.state_dict() if key.startswith("diffusion_model.")]
    ldm_state = {key[len("diffusion_model."):]: value for key, value in live_weights(model, unet_keys).items()}
    diffusers_state = unet.state_dict()
    assert set(diffusers_state) <= set(key_map), sorted(set(diffusers_state) - set(key_map))[:5]
    unet.load_state_dict({key: ldm_state[key_map[key]].reshape(diffusers_state[key].shape).float()
                          for key in diffusers_state}, strict=True)

    state_dict, network_alphas = StableDiffusionXLLoraLoaderMixin.lora_state_dict(str(lora_dir / name),
                                                                                  unet_config=unet.config)
    StableDiffusionXLLoraLoaderMixin.load_lora_into_unet(state_dict, network_alphas, unet=unet, adapter_name="uce")
    unet.fuse_lora(lora_scale=1.0)
    fused = unet.state_dict()
    inverse = {}
    for diffusers_key, ldm in key_map.items():
        inverse.setdefault(ldm, []).append(diffusers_key)
    expected = live_weights(edited, edit.keys)
    for key in edit.keys:
        candidates = [k for k in inverse[key[len("diffusion_model."):]] if k in diffusers_state]
        (diffusers_key,) = candidates
        fused_key = diffusers_key if diffusers_key in fused else diffusers_key.replace(".weight", ".base_layer.weight")
        assert (expected[key] - ldm_state[key[len("diffusion_model."):]]).abs().max() > 1e-5, "the edit changes it"
        torch.testing.assert_close(fused[fused_key].float(), expected[key], rtol=0, atol=5e-6, msg=key)


def test_diffusers_loads_the_saved_flux_edit(pack, lora_dir, tiny_family):
    """diffusers' Flux LoRA loading (its own PEFT names) on a diffusers Flux transformer of the tiny model's sizes:
    the change fusing makes to context_embedder (txt_in) and the pooled text_embedder (vector_in) is the edit's."""
    diffusers = pytest.importorskip("diffusers", reason="diffusers is a dev dependency (scripts/setup.sh)")
    pytest.importorskip("peft", reason="diffusers loads LoRAs through peft (scripts/setup.sh)")
    from diffusers.loaders.lora_pipeline import FluxLoraLoaderMixin

    flux = tiny_family("flux")
    edited, _, edit = run_uce_outputs(pack, "UCEEraseConcepts", flux.model, flux.clip, concepts="Van Gogh",
                                      preserve="a bicycle", expand_prompts=False, strength=0.8, pooled="on")
    name, _ = save(pack, edit, "uce/diffusers_flux")
    config = flux.model.model.model_config.unet_config
    transformer = diffusers.FluxTransformer2DModel(
        patch_size=1, in_channels=config["in_channels"] * 4, num_layers=1, num_single_layers=1,
        attention_head_dim=config["hidden_size"] // config["num_heads"], num_attention_heads=config["num_heads"],
        joint_attention_dim=config["context_in_dim"], pooled_projection_dim=config["vec_in_dim"],
        guidance_embeds=True, axes_dims_rope=tuple(config["axes_dim"]),
    )
    names = {"diffusion_model.txt_in.weight": "context_embedder.weight",
             "diffusion_model.vector_in.in_layer.weight": "time_text_embed.text_embedder.linear_1.weight"}
    assert set(edit.keys) == set(names)
    before = {key: value.clone() for key, value in transformer.state_dict().items()}
    state_dict, network_alphas = FluxLoraLoaderMixin.lora_state_dict(str(lora_dir / name), return_alphas=True)
    assert set(state_dict) == {f"transformer.{module[:-len('.weight')]}.lora_{ab}.weight"
                               for module in names.values() for ab in "AB"}, sorted(state_dict)
    FluxLoraLoaderMixin.load_lora_into_transformer(state_dict, network_alphas, transformer=transformer,
                                                   adapter_name="uce")
    transformer.fuse_lora(lora_scale=1.0)
    fused = transformer.state_dict()
    base = live_weights(flux.model, edit.keys)
    expected = live_weights(edited, edit.keys)
    for key, diffusers_key in names.items():
        fused_key = diffusers_key if diffusers_key in fused else diffusers_key.replace(".weight", ".base_layer.weight")
        delta = expected[key] - base[key]
        assert delta.abs().max() > 1e-5
        torch.testing.assert_close(fused[fused_key] - before[diffusers_key], delta, rtol=0, atol=5e-6, msg=key)


def test_diffusers_loads_the_saved_sd3_edit(pack, lora_dir, tiny_family):
    """diffusers' SD3 LoRA loading (its own PEFT names) on a diffusers SD3 transformer of the tiny model's sizes:
    the change fusing makes to context_embedder and the pooled text_embedder (y_embedder) is the edit's."""
    diffusers = pytest.importorskip("diffusers", reason="diffusers is a dev dependency (scripts/setup.sh)")
    pytest.importorskip("peft", reason="diffusers loads LoRAs through peft (scripts/setup.sh)")
    from diffusers.loaders.lora_pipeline import SD3LoraLoaderMixin

    sd3 = tiny_family("sd3")
    edited, _, edit = run_uce_outputs(pack, "UCEEraseConcepts", sd3.model, sd3.clip, concepts="Van Gogh",
                                      preserve="a bicycle", expand_prompts=False, strength=0.8, pooled="on")
    name, _ = save(pack, edit, "uce/diffusers_sd3")
    weights = sd3.model.model.state_dict()
    width, context = weights["diffusion_model.context_embedder.weight"].shape
    transformer = diffusers.SD3Transformer2DModel(
        sample_size=32, patch_size=2, in_channels=16, out_channels=16, num_layers=1, attention_head_dim=64,
        num_attention_heads=width // 64, joint_attention_dim=context, caption_projection_dim=width,
        pooled_projection_dim=weights["diffusion_model.y_embedder.mlp.0.weight"].shape[1], pos_embed_max_size=32,
    )
    names = {"diffusion_model.context_embedder.weight": "context_embedder.weight",
             "diffusion_model.y_embedder.mlp.0.weight": "time_text_embed.text_embedder.linear_1.weight"}
    assert set(edit.keys) == set(names)
    before = {key: value.clone() for key, value in transformer.state_dict().items()}
    state_dict = SD3LoraLoaderMixin.lora_state_dict(str(lora_dir / name))
    SD3LoraLoaderMixin.load_lora_into_transformer(state_dict, transformer=transformer, adapter_name="uce")
    transformer.fuse_lora(lora_scale=1.0)
    fused = transformer.state_dict()
    base = live_weights(sd3.model, edit.keys)
    expected = live_weights(edited, edit.keys)
    for key, diffusers_key in names.items():
        fused_key = diffusers_key if diffusers_key in fused else diffusers_key.replace(".weight", ".base_layer.weight")
        delta = expected[key] - base[key]
        assert delta.abs().max() > 1e-5
        torch.testing.assert_close(fused[fused_key] - before[diffusers_key], delta, rtol=0, atol=5e-6, msg=key)
