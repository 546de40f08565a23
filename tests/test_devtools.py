"""The development tools give a real ComfyUI and tiny models that behave like the real families."""

import sys
import textwrap

import pytest
import safetensors.torch
import torch
from uce_devtools import comfy_env, tiny_models
from uce_devtools.graph import cross_attention_kv_keys, live_weights, run_node

SD15_KV_KEYS = {
    f"diffusion_model.{block}.1.transformer_blocks.0.attn2.to_{kind}.weight"
    for block in ("input_blocks.1", "middle_block", "output_blocks.0", "output_blocks.1")
    for kind in ("k", "v")
}


def encode(clip, text):
    return run_node("CLIPTextEncode", clip=clip, text=text)[0]


def sample(model, positive, negative, steps=2, cfg=7.0, size=64, seed=0):
    latent = run_node("EmptyLatentImage", width=size, height=size, batch_size=1)[0]
    out = run_node(
        "KSampler",
        model=model,
        seed=seed,
        steps=steps,
        cfg=cfg,
        sampler_name="euler",
        scheduler="normal",
        positive=positive,
        negative=negative,
        latent_image=latent,
        denoise=1.0,
    )[0]
    return out["samples"]


def test_tiny_checkpoint_is_detected_as_sd15_with_taesd(sd15):
    import comfy.supported_models
    import comfy.taesd.taesd

    model, clip, vae = sd15
    assert type(model.model.model_config) is comfy.supported_models.SD15
    assert isinstance(vae.first_stage_model, comfy.taesd.taesd.TAESD)
    assert type(clip.cond_stage_model).__name__ == "SD1ClipModel"


def test_sd15_has_eight_cross_attention_kv_matrices_of_width_768(sd15):
    kv = cross_attention_kv_keys(sd15[0])
    assert set(kv) == SD15_KV_KEYS
    assert set(kv.values()) == {(320, 768)}


@pytest.mark.parametrize(
    "family_fixture, family, count, out_widths, in_width",
    [("sd2_family", "sd2", 14, {320, 640}, 1024), ("sdxl_family", "sdxl", 8, {640}, 2048)],
)
def test_family_cross_attention_kv_matrices(request, family_fixture, family, count, out_widths, in_width):
    tiny = request.getfixturevalue(family_fixture)
    kv = cross_attention_kv_keys(tiny.model)
    assert tiny.family == family
    assert len(kv) == count
    assert {shape[0] for shape in kv.values()} == out_widths
    assert {shape[1] for shape in kv.values()} == {in_width}


def test_family_model_configs_are_comfyuis(sd2_family, sdxl_family):
    import comfy.model_base
    import comfy.supported_models

    assert type(sd2_family.model.model.model_config) is comfy.supported_models.SD20
    assert type(sdxl_family.model.model.model_config) is comfy.supported_models.SDXL
    assert isinstance(sdxl_family.model.model, comfy.model_base.SDXL)  # ADM from pooled output + sizes


@pytest.mark.parametrize(
    "source, width, encoders",
    [("sd15", 768, {"l"}), ("sd2_family", 1024, {"h"}), ("sdxl_family", 2048, {"g", "l"})],
)
def test_conditioning_width_and_tokenizers(request, source, width, encoders):
    loaded = request.getfixturevalue(source)
    clip = loaded[1] if source == "sd15" else loaded.clip
    tokens = clip.tokenize("a cat")
    assert set(tokens) == encoders
    with torch.inference_mode():
        out = clip.encode_from_tokens(tokens, return_pooled=True, return_dict=True)
    cond = out["cond"]
    assert cond.shape == (1, 77, width)
    assert torch.isfinite(cond).all()
    assert cond[0].std(dim=0).mean() > 0.01  # token rows differ from each other
    if source == "sdxl_family":
        assert out["pooled_output"].shape == (1, 1280)


def test_sd15_sampling_gives_finite_prompt_dependent_images(sd15):
    model, clip, vae = sd15
    cat, car, empty = encode(clip, "a photo of a cat"), encode(clip, "a red sports car"), encode(clip, "")
    images = []
    for positive in (cat, car, cat):
        latent = sample(model, positive, empty)
        images.append(run_node("VAEDecode", vae=vae, samples={"samples": latent})[0])
    cat_image, car_image, cat_again = images
    assert cat_image.shape == (1, 64, 64, 3)
    assert torch.isfinite(cat_image).all()
    assert 0.1 < cat_image.std() < 0.45  # a varied image, neither flat nor clipped to 0/1
    assert ((cat_image == 0) | (cat_image == 1)).float().mean() < 0.2
    assert (cat_image - car_image).abs().mean() > 0.01
    assert torch.equal(cat_image, cat_again)


@pytest.mark.parametrize("family_fixture", ["sd2_family", "sdxl_family"])
def test_family_sampling_step_is_finite_and_prompt_dependent(request, family_fixture):
    tiny = request.getfixturevalue(family_fixture)
    empty = encode(tiny.clip, "")
    cat = sample(tiny.model, encode(tiny.clip, "a cat"), empty, steps=1)
    car = sample(tiny.model, encode(tiny.clip, "a red car"), empty, steps=1)
    assert cat.shape == (1, 4, 8, 8)
    assert torch.isfinite(cat).all()
    assert (cat - car).abs().mean() > 1e-3 * cat.abs().mean()


def test_lora_loader_changes_effective_cross_attention_weights_exactly(sd15, tiny_lora_name):
    import folder_paths

    model, clip, _ = sd15
    lora_model, _ = run_node(
        "LoraLoader", model=model, clip=clip, lora_name=tiny_lora_name, strength_model=1.0, strength_clip=1.0
    )
    half_model, _ = run_node(
        "LoraLoader", model=model, clip=clip, lora_name=tiny_lora_name, strength_model=0.5, strength_clip=0.0
    )
    assert SD15_KV_KEYS <= set(lora_model.patches)
    assert not model.patches  # the loaded model is untouched

    lora = safetensors.torch.load_file(folder_paths.get_full_path_or_raise("loras", tiny_lora_name))
    key = "diffusion_model.middle_block.1.transformer_blocks.0.attn2.to_k.weight"
    lora_name = "lora_unet_middle_block_1_transformer_blocks_0_attn2_to_k"
    delta = lora[lora_name + ".lora_up.weight"] @ lora[lora_name + ".lora_down.weight"]
    base = live_weights(model, [key])[key]
    assert delta.abs().max() > 0.1 * base.abs().max()
    torch.testing.assert_close(live_weights(lora_model, [key])[key], base + delta)
    torch.testing.assert_close(live_weights(half_model, [key])[key], base + 0.5 * delta)


def test_run_node_runs_v3_nodes(comfy, sdxl_family):
    comfy_env.init_extra_nodes()
    import comfy_api.latest

    assert issubclass(comfy.NODE_CLASS_MAPPINGS["CLIPTextEncodeSDXL"], comfy_api.latest.io.ComfyNode)
    (conditioning,) = run_node(
        "CLIPTextEncodeSDXL",
        clip=sdxl_family.clip,
        width=1024,
        height=1024,
        crop_w=0,
        crop_h=0,
        target_width=1024,
        target_height=1024,
        text_g="a cat",
        text_l="a cat",
    )
    cond, extras = conditioning[0]
    assert cond.shape == (1, 77, 2048)
    assert extras["pooled_output"].shape == (1, 1280)
    assert extras["width"] == 1024


def test_randomize_is_seeded_per_tensor():
    def build(seed):
        module = torch.nn.Sequential(torch.nn.Linear(8, 16), torch.nn.LayerNorm(16), torch.nn.Embedding(10, 4))
        tiny_models.randomize_(module, seed, "probe")
        return module.state_dict()

    first, again, other = build(0), build(0), build(1)
    assert all(torch.equal(first[name], again[name]) for name in first)
    assert not torch.equal(first["0.weight"], other["0.weight"])
    assert torch.equal(first["1.weight"], torch.ones(16)) and torch.equal(first["1.bias"], torch.zeros(16))
    assert 0.2 < first["0.weight"].std() * 8**0.5 < 2.0


def test_tiny_checkpoint_is_cached_under_a_versioned_name(tiny_sd15_path):
    path = tiny_models.tiny_sd15_checkpoint()
    assert path.name == tiny_sd15_path
    assert tiny_models.TINY_MODELS_VERSION in path.name
    assert path.is_relative_to(comfy_env.REPO_ROOT / ".cache")


def test_load_pack_imports_a_folder_as_a_package_without_shadowing_comfyui(comfy, tmp_path):
    pack = tmp_path / "probe_pack"
    (pack / "nodes").mkdir(parents=True)
    (pack / "__init__.py").write_text(
        textwrap.dedent("""
        from .nodes.probe import ProbeNode
        NODE_CLASS_MAPPINGS = {"UCEDevtoolsProbe": ProbeNode}
        NODE_DISPLAY_NAME_MAPPINGS = {"UCEDevtoolsProbe": "Probe"}
    """)
    )
    (pack / "nodes" / "__init__.py").write_text("")
    (pack / "nodes" / "probe.py").write_text(
        textwrap.dedent("""
        class ProbeNode:
            RETURN_TYPES = ("INT",)
            FUNCTION = "run"
            @classmethod
            def INPUT_TYPES(cls):
                return {"required": {"value": ("INT", {})}}
            def run(self, value):
                return (value * 2,)
    """)
    )
    name = "uce_devtools_probe_pack"
    try:
        module = comfy_env.load_pack(name=name, root=pack)
        assert comfy_env.load_pack(name=name, root=pack) is module
        assert sys.modules[f"{name}.nodes"].__file__ == str(pack / "nodes" / "__init__.py")
        assert sys.modules["nodes"] is comfy
        assert "CheckpointLoaderSimple" in sys.modules["nodes"].NODE_CLASS_MAPPINGS
        assert run_node("UCEDevtoolsProbe", value=21) == (42,)
    finally:
        comfy.NODE_CLASS_MAPPINGS.pop("UCEDevtoolsProbe", None)
        comfy.NODE_DISPLAY_NAME_MAPPINGS.pop("UCEDevtoolsProbe", None)
        for key in [key for key in sys.modules if key == name or key.startswith(name + ".")]:
            del sys.modules[key]


def test_load_pack_registers_v3_extension_nodes(comfy, tmp_path):
    pack = tmp_path / "probe_v3_pack"
    pack.mkdir()
    (pack / "__init__.py").write_text(
        textwrap.dedent("""
        from comfy_api.latest import ComfyExtension, io

        class ProbeV3(io.ComfyNode):
            @classmethod
            def define_schema(cls):
                return io.Schema(
                    node_id="UCEDevtoolsProbeV3", inputs=[io.Int.Input("value")], outputs=[io.Int.Output()]
                )

            @classmethod
            def execute(cls, value):
                return io.NodeOutput(value + 1)

        class ProbeExtension(ComfyExtension):
            async def get_node_list(self):
                return [ProbeV3]

        async def comfy_entrypoint():
            return ProbeExtension()
    """)
    )
    name = "uce_devtools_probe_v3_pack"
    try:
        comfy_env.load_pack(name=name, root=pack)
        assert run_node("UCEDevtoolsProbeV3", value=41) == (42,)
    finally:
        comfy.NODE_CLASS_MAPPINGS.pop("UCEDevtoolsProbeV3", None)
        sys.modules.pop(name, None)


def test_load_solver_imports_a_standalone_uce_solver_package(tmp_path):
    solver = tmp_path / "uce_solver"
    solver.mkdir()
    (solver / "__init__.py").write_text("from .core import answer\n")
    (solver / "core.py").write_text("def answer():\n    return 42\n")
    saved = {key: module for key, module in sys.modules.items() if key == "uce_solver" or key.startswith("uce_solver.")}
    for key in saved:
        del sys.modules[key]
    try:
        module = comfy_env.load_solver(root=solver)
        assert module.__name__ == "uce_solver"
        assert module.answer() == 42
        assert sys.modules["uce_solver.core"].answer is module.answer
    finally:
        for key in [key for key in sys.modules if key == "uce_solver" or key.startswith("uce_solver.")]:
            del sys.modules[key]
        sys.modules.update(saved)
