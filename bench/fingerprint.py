"""What the preserve cache's text-encoder fingerprint costs, against encoding with CLIP-L; prints a markdown table.

    .venv/bin/python bench/fingerprint.py [--t5-fraction 0.25] [--repeats 3]

The fingerprint (nodes/preserve_cache.py) hashes every byte of the text encoder's
weights once per loaded model (later edits reuse it). Measured on: the real-size
CLIP-L of the tiny SD1.5 checkpoint, as ComfyUI loads it (123 M parameters, the
tokenizer's vocabulary included); random fp16 weights of CLIP-G's shapes (695 M);
random fp16 weights of T5-XXL's encoder shapes (4.76 B, 9.5 GB), built at
``--t5-fraction`` of its blocks when memory is short and scaled linearly by bytes
(hashing is linear in bytes). Against: encoding one prompt with that CLIP-L on this
machine, alone and within a batch of 64 (the pack's batched encoding).

    .venv/bin/python bench/fingerprint.py --art-restart

adds the first art-preset erase after a restart (a fresh process each time) on that
checkpoint: with an empty preserve cache (every artist encoded) and with the cache the
first run wrote (in a folder under ComfyUI's temp directory, removed afterwards).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import statistics
import subprocess
import sys
import time
from pathlib import Path

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")  # idle OpenMP threads sleep; must precede `import torch`

BENCH_DIR = Path(__file__).resolve().parent
REPO_ROOT = BENCH_DIR.parent
sys.path[:] = [p for p in sys.path if Path(p or ".").resolve() != BENCH_DIR]
sys.path.insert(0, str(REPO_ROOT / "devtools"))  # uce_devtools; never the repository root itself

import torch  # noqa: E402

T5_XXL_BLOCKS = 24


class Weights(torch.nn.Module):
    """A bag of named weights (a state dict without the model around it)."""

    def __init__(self, shapes: dict[str, tuple[int, ...]], dtype=torch.float16, seed: int = 0):
        super().__init__()
        generator = torch.Generator().manual_seed(seed)
        for name, shape in shapes.items():
            tensor = torch.randn(shape, generator=generator, dtype=torch.float32).to(dtype)
            self.register_buffer(name.replace(".", "__"), tensor)


def clip_g_shapes() -> dict[str, tuple[int, ...]]:
    """OpenCLIP bigG text tower: 32 blocks of width 1280, MLP 5120, vocabulary 49408, 77 positions."""
    width, mlp, shapes = 1280, 5120, {}
    shapes["embeddings.token_embedding.weight"] = (49408, width)
    shapes["embeddings.position_embedding.weight"] = (77, width)
    for i in range(32):
        p = f"encoder.layers.{i}."
        for proj in ("q", "k", "v", "out"):
            shapes[p + f"self_attn.{proj}_proj.weight"] = (width, width)
            shapes[p + f"self_attn.{proj}_proj.bias"] = (width,)
        for norm in ("layer_norm1", "layer_norm2"):
            shapes[p + f"{norm}.weight"] = (width,)
            shapes[p + f"{norm}.bias"] = (width,)
        shapes[p + "mlp.fc1.weight"] = (mlp, width)
        shapes[p + "mlp.fc1.bias"] = (mlp,)
        shapes[p + "mlp.fc2.weight"] = (width, mlp)
        shapes[p + "mlp.fc2.bias"] = (width,)
    shapes["final_layer_norm.weight"] = (width,)
    shapes["final_layer_norm.bias"] = (width,)
    shapes["text_projection.weight"] = (width, width)
    return shapes


def t5_xxl_shapes(blocks: int = T5_XXL_BLOCKS) -> dict[str, tuple[int, ...]]:
    """T5 v1.1 XXL encoder: d_model 4096, 64 heads x 64, gated FF 10240, vocabulary 32128."""
    d, ff = 4096, 10240
    shapes = {"shared.weight": (32128, d)}
    for i in range(blocks):
        p = f"encoder.block.{i}.layer."
        for proj in ("q", "k", "v", "o"):
            shapes[p + f"0.SelfAttention.{proj}.weight"] = (d, d)
        if i == 0:
            shapes[p + "0.SelfAttention.relative_attention_bias.weight"] = (32, 64)
        shapes[p + "0.layer_norm.weight"] = (d,)
        shapes[p + "1.DenseReluDense.wi_0.weight"] = (ff, d)
        shapes[p + "1.DenseReluDense.wi_1.weight"] = (ff, d)
        shapes[p + "1.DenseReluDense.wo.weight"] = (d, ff)
        shapes[p + "1.layer_norm.weight"] = (d,)
    shapes["encoder.final_layer_norm.weight"] = (d,)
    return shapes


def count(shapes) -> int:
    total = 0
    for shape in shapes.values():
        n = 1
        for s in shape:
            n *= s
        total += n
    return total


def timed(fn, repeats: int) -> float:
    """Median wall time of ``fn()`` over ``repeats`` runs."""
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def art_edit_once() -> dict:
    """In this (fresh) process: load ComfyUI and the checkpoint, run one art-preset erase; its times."""
    from uce_devtools import comfy_env, tiny_models
    from uce_devtools.graph import run_node

    comfy_env.import_comfyui(cpu=True)
    pack = comfy_env.load_pack()
    path = tiny_models.tiny_sd15_checkpoint()
    comfy_env.register_checkpoint_dir(path.parent)
    model, clip, _ = run_node("CheckpointLoaderSimple", ckpt_name=path.name)
    values = dict(
        concepts="Van Gogh", concept_type="art", guide="art", preserve="", expand_prompts=True, erase_scale=1.0,
        preserve_scale=-1.0, lamb=0.5, token_mode="paper", projections="keys+values", strength=1.0,
    )
    start = time.perf_counter()
    with torch.inference_mode():
        report = run_node("UCEEraseConcepts", model=model, clip=clip, **values)[1]
    seconds = time.perf_counter() - start
    preserve = next(line for line in report.splitlines() if "preserve:" in line)
    return {"seconds": seconds, "preserve": preserve.strip(), "row_cache_misses": pack.nodes.text_cache.ROW_CACHE.misses}


def art_restart() -> list[dict]:
    """The first art erase in two fresh processes: empty preserve cache, then the cache the first one wrote."""
    from uce_devtools import comfy_env

    comfy_env.import_comfyui(cpu=True)
    import folder_paths

    folder = Path(folder_paths.get_temp_directory()) / "uce_bench_preserve_cache"
    shutil.rmtree(folder, ignore_errors=True)
    env = {**os.environ, "UCE_PRESERVE_CACHE_DIR": str(folder), "UCE_PRESERVE_CACHE_MB": "2048"}
    runs = []
    try:
        for name in ("empty cache (before)", "cache on disk (after)"):
            out = subprocess.run(
                [sys.executable, __file__, "--art-edit-once"], env=env, check=True, capture_output=True, text=True
            ).stdout
            result = json.loads(out.strip().splitlines()[-1])
            result["run"] = name
            result["cache_bytes"] = sum(p.stat().st_size for p in folder.glob("*.safetensors"))
            runs.append(result)
    finally:
        shutil.rmtree(folder, ignore_errors=True)
    return runs


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--t5-fraction", type=float, default=0.25, help="share of T5-XXL's 24 blocks to build (1 = all)")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--art-restart", action="store_true", help="also time the first art erase after a restart")
    parser.add_argument("--art-edit-once", action="store_true", help=argparse.SUPPRESS)  # the child process
    args = parser.parse_args()
    if args.art_edit_once:
        print(json.dumps(art_edit_once()))
        return

    from uce_devtools import comfy_env, tiny_models
    from uce_devtools.graph import run_node

    comfy_env.import_comfyui(cpu=True)
    pack = comfy_env.load_pack()
    cache = pack.nodes.preserve_cache
    text_rows = pack.nodes.text_rows
    path = tiny_models.tiny_sd15_checkpoint()
    comfy_env.register_checkpoint_dir(path.parent)
    _, clip, _ = run_node("CheckpointLoaderSimple", ckpt_name=path.name)

    rows = []  # (weights, params, bytes, seconds, note)
    with torch.inference_mode():
        state = clip.cond_stage_model.state_dict()
        clip_l_bytes = sum(t.numel() * t.element_size() for t in state.values())
        clip_l_params = sum(t.numel() for t in state.values())

        def whole_fingerprint():
            cache.clear_memo()
            cache.encoder_fingerprint(clip)

        rows.append(("CLIP-L, as loaded (weights + tokenizer + settings)", clip_l_params, clip_l_bytes,
                     timed(whole_fingerprint, args.repeats), "measured"))
        memo_hit = timed(lambda: cache.encoder_fingerprint(clip), 20)

        prompts = [f"a painting by artist number {i}" for i in range(64)]
        clip.encode_from_tokens(clip.tokenize(prompts[0]), return_dict=True)  # warm up
        one = timed(lambda: clip.encode_from_tokens(clip.tokenize(prompts[1]), return_dict=True), 5)
        batched = timed(lambda: text_rows.encode_prompts(clip, prompts, batch_size=64, cache=None), 1) / len(prompts)

        def fingerprint_seconds(shapes) -> float:  # the weights are freed on return
            weights = Weights(shapes)
            return timed(lambda: cache.weights_fingerprint(weights, memo=False), args.repeats)

        shapes = clip_g_shapes()
        rows.append(("CLIP-G shapes, random fp16", count(shapes), 2 * count(shapes), fingerprint_seconds(shapes),
                     "measured"))

        blocks = max(1, round(T5_XXL_BLOCKS * args.t5_fraction))
        shapes = t5_xxl_shapes(blocks)
        full = t5_xxl_shapes()
        seconds = fingerprint_seconds(shapes)
        if blocks == T5_XXL_BLOCKS:
            rows.append(("T5-XXL encoder shapes, random fp16", count(full), 2 * count(full), seconds, "measured"))
        else:
            scale = count(full) / count(shapes)
            rows.append((
                f"T5-XXL encoder shapes, random fp16 ({blocks} of 24 blocks, scaled x{scale:.2f})",
                count(full), 2 * count(full), seconds * scale,
                f"measured {seconds:.2f} s on {count(shapes) / 1e9:.2f} B params",
            ))

    print(f"Machine: {platform.processor() or platform.machine()}, {os.cpu_count()} CPUs, torch {torch.__version__}, "
          f"hashing threads {cache.HASH_THREADS}; median of {args.repeats} runs.\n")
    print(f"Encoding one prompt with the real-size CLIP-L (CPU): {one * 1000:.0f} ms alone, "
          f"{batched * 1000:.0f} ms per prompt in a batch of 64. "
          f"A repeated fingerprint of a loaded encoder (remembered): {memo_hit * 1e6:.0f} µs.\n")
    print("| Weights | parameters | bytes | fingerprint | hashing speed | = CLIP-L prompts (alone / batched) | note |")
    print("|---|---:|---:|---:|---:|---:|---|")
    for name, params, size, seconds, note in rows:
        print(f"| {name} | {params / 1e6:,.0f} M | {size / 2**30:.2f} GiB | {seconds:.2f} s | "
              f"{size / seconds / 1e9:.2f} GB/s | {seconds / one:.1f} / {seconds / batched:.1f} | {note} |")
    if args.art_restart:
        print("\nFirst art-preset erase (\"Van Gogh\", the shipped artists list) after a restart, tiny SD1.5 with the "
              "real-size CLIP-L, CPU; node time after the checkpoint is loaded:\n")
        print("| Run | node time | preserve | prompts encoded | cache on disk |")
        print("|---|---:|---|---:|---:|")
        for run in art_restart():
            print(f"| {run['run']} | {run['seconds']:.1f} s | {run['preserve']} | {run['row_cache_misses']:,} | "
                  f"{run['cache_bytes'] / 2**20:.1f} MiB |")


if __name__ == "__main__":
    main()
