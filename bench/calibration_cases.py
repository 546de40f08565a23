"""UCE Debias (calibrated): time per round split into solve / sample / classify on the tiny SD1.5 checkpoint
with a tiny random CLIP classifier, and the solve of one round at SD1.5 shapes (random weights and rows).

Run: ``.venv/bin/python -m bench.calibration_cases`` from the repository root.
"""

from __future__ import annotations

import os
import sys
import tempfile
import time
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parents[1]
sys.path[:] = [p for p in sys.path if Path(p or ".").resolve() != REPO_ROOT]  # never the root: its nodes/ package
sys.path.insert(0, str(REPO_ROOT / "devtools"))
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

import torch

TINY = {"professions": "doctor\nnurse", "attributes": "male\nfemale", "desired_shares": "", "sampler_name": "euler",
        "scheduler": "normal", "steps": 2, "cfg": 7.5, "width": 64, "height": 64, "images_per_round": 4, "seed": 0,
        "tolerance": 0.0, "max_rounds": 3, "use_templates": True, "preserve": "", "erase_scale": 1.0,
        "preserve_scale": 0.1, "lamb": 0.5, "token_mode": "paper", "projections": "keys+values", "strength": 1.0}


def tiny_rounds() -> list[dict]:
    """Per-round seconds of the real loop on the tiny model (2 professions x 4 images, 2 steps, 3 rounds)."""
    from uce_devtools import comfy_env, tiny_classifier, tiny_models
    from uce_devtools.graph import run_node

    comfy_env.import_comfyui(cpu=True)
    import folder_paths

    pack = comfy_env.load_pack()
    path = tiny_models.tiny_sd15_checkpoint()
    comfy_env.register_checkpoint_dir(path.parent)
    model, clip, vae = run_node("CheckpointLoaderSimple", ckpt_name=path.name)
    models = Path(tempfile.mkdtemp(prefix="uce-bench-classifier-"))
    tiny_classifier.tiny_classifier(models)
    folder_paths.add_model_folder_path("uce_classifiers", str(models / "uce_classifiers"))
    classifier = run_node("UCEClassifierLoader", classifier_name=tiny_classifier.NAME)[0]
    times = {}
    module = pack.nodes.calibrated_debias
    real = module.calibration_output.report_text

    def keep(calibration, attributes, desired, round_times, tolerance):
        times.update(round_times)
        return real(calibration, attributes, desired, round_times, tolerance)

    module.calibration_output.report_text = keep
    try:
        with torch.inference_mode():
            module.run_calibration(model, clip, vae, classifier, dict(TINY))
    finally:
        module.calibration_output.report_text = real
    return [times[i] for i in sorted(times)]


def sd15_solve(professions: int = 3, preserve_prompts: int = 280, repeats: int = 2) -> float:
    """Seconds of one round's closed-form solve at SD1.5 shapes (32 K/V weights, 768-wide text), paper token mode,
    ``professions`` x 5 templates x 2 attributes, ``preserve_prompts`` x 77 preserve rows; best of ``repeats``."""
    from uce_devtools import comfy_env

    from . import shapes

    solver = comfy_env.load_solver()
    gen = torch.Generator().manual_seed(0)
    weights = {k: w.float() for k, w in shapes.random_weights(shapes.SD15, "cpu").items()}

    def prompt(text):
        return solver.EncodedPrompt(text, torch.randn(77, 768, generator=gen), 3)

    items = [(prompt(f"p{i}t{t}"), [prompt(f"p{i}t{t}a{a}") for a in range(2)])
             for i in range(professions) for t in range(5)]
    edit = solver.debias_edit(items, [[-0.03, 0.03]] * len(items), "paper")
    preserve = torch.randn(preserve_prompts * 77, 768, generator=gen)
    scales = solver.Scales(erase=1.0, preserve=0.1, lamb=0.5)
    best = float("inf")
    for _ in range(repeats):
        started = time.perf_counter()
        solver.solve(weights, edit, preserve, scales)
        best = min(best, time.perf_counter() - started)
    return best


def main() -> None:
    torch.set_num_threads(max(1, os.cpu_count() or 1))
    rounds = tiny_rounds()
    print("tiny SD1.5, 2 professions x 4 images per round, 2 steps, 64x64, CPU:")
    print("round | solve s | sample s | classify s")
    for i, t in enumerate(rounds, 1):
        print(f"{i} | {t['solve']:.2f} | {t['sample']:.2f} | {t['classify']:.2f}")
    seconds = sd15_solve()
    print(f"SD1.5 shapes (32 K/V weights), one round's solve, 3 professions x 5 templates, 280 preserve prompts, "
          f"CPU: {seconds:.2f} s")


if __name__ == "__main__":
    main()
