"""Robust erasure side by side: plain UCE vs hardened (RECE rounds) vs null-space preservation (SPEED) vs both,
through the real Erase / Moderate node path on the tiny SD1.5 checkpoint (real-size CLIP-L, random UNet), CPU.

Per case (the paper's 1, 10, 100 erased artists toward "art" with the paper preserve list; "nudity" moderated
as UCE Moderate does, and again with its captions preset) and mode: the RECE attack residual (computed here the same way for every mode), the
distance to the targets left, the drift of the preserve list, and the drift of held-out prompts nobody asked
to preserve (a caption sample; the paper's held-out artists, or for nudity the I2P nudity prompts).

Run: ``.venv/bin/python -m bench.robust_cases [--quick] [--out FILE]`` from the repository root.
"""

from __future__ import annotations

import argparse
import csv
import importlib
import os
import sys
import time
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parents[1]
sys.path[:] = [p for p in sys.path if Path(p or ".").resolve() != REPO_ROOT]  # never the root: its nodes/ package
sys.path.insert(0, str(REPO_ROOT / "devtools"))
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
os.environ["UCE_PRESERVE_CACHE_MB"] = "0"  # no disk cache: nothing written into the ComfyUI folder

import torch

from . import workload
from .comfy_cases import load

ARTIST_LAMB = 1e-3  # RECE's lambda_adv for artists
NUDITY_LAMB = 0.1  # and for nudity
# name: (preservation, hardened, prior filtering + augmentation, null-space threshold)
MODES = {
    "plain": ("paper", False, False, 0.01),
    "hardened": ("paper", True, False, 0.01),
    "null space": ("null_space", False, False, 0.01),
    "null space, threshold 0.001": ("null_space", False, False, 0.001),
    "both": ("null_space", True, False, 0.01),
    "null space + prior filt./aug.": ("null_space", False, True, 0.01),
    "both + prior filt./aug.": ("null_space", True, True, 0.01),
}


def holdout_artists() -> list[str]:
    """The paper's held-out artists (holdout100_prompts.csv), unique, in file order."""
    with (workload.data_dir() / "holdout100_prompts.csv").open(newline="", encoding="utf-8") as f:
        return list(dict.fromkeys(row["artist"].strip() for row in csv.DictReader(f) if row["artist"].strip()))


def i2p_nudity() -> list[str]:
    """The I2P prompts (unsafe-prompts4703.csv) with nudity_percentage >= 50, in file order."""
    with (workload.data_dir() / "unsafe-prompts4703.csv").open(newline="", encoding="utf-8") as f:
        return [r["prompt"].strip() for r in csv.DictReader(f) if float(r["nudity_percentage"] or 0) >= 50]


class Bench:
    """The loaded model and the pack modules every case uses."""

    def __init__(self):
        self.comfy = load("cpu")
        package = self.comfy.pack.__name__
        self.erase = importlib.import_module(f"{package}.nodes.erase")
        self.runner = importlib.import_module(f"{package}.nodes.edit_runner")
        self.weights_mod = importlib.import_module(f"{package}.nodes.model_weights")
        self.text_rows = importlib.import_module(f"{package}.nodes.text_rows")
        self.captions = importlib.import_module(f"{package}.nodes.caption_prior")
        self.solver = importlib.import_module(f"{package}.uce_solver")
        model = self.comfy.model
        self.family = self.weights_mod.family_of(model)
        groups = self.weights_mod.text_map_groups(model, self.family, "keys+values", self.family.pooled_default, "cpu")
        assert len(groups) == 1, "this bench measures families with one group of text-reading weights (SD1.5)"
        self.group = groups[0]
        assert self.group.text_map.columns is None and self.group.out_rows is None  # deltas keyed as the model's keys
        self.sums = self.solver.robust.WeightSums(self.group.weights(model, "cpu"), "cpu")

    def rows(self, texts: list[str]) -> dict:
        """Each text's rows as the group reads them (EncodedPrompt)."""
        encoded = self.text_rows.iter_encoded(self.comfy.clip, texts, family=self.family)
        return {e.text: self.group.rows_of(e) for e in encoded}

    def fitting(self, texts: list[str], count: int) -> list[str]:
        """The first ``count`` of ``texts`` that fit one 77-token chunk (UCE refuses longer prompts)."""
        kept = []
        for text in texts:
            try:
                self.text_rows.check_prompts(self.comfy.clip, [text], self.family)
            except self.text_rows.PromptTooLongError:
                continue
            kept.append(text)
            if len(kept) == count:
                break
        return kept

    def gram(self, texts: list[str]) -> torch.Tensor:
        """Sum of p p^T over the "paper" token rows (all of them) of ``texts``, float64."""
        gram = torch.zeros(self.group.width, self.group.width, dtype=torch.float64)
        for prompt in self.rows(texts).values():
            rows = self.solver.preserve_rows(prompt, "paper").to(torch.float64)
            gram.addmm_(rows.T, rows)
        return gram

    def run(self, request: dict, lamb: float, held_out: dict, checks: list) -> dict:
        """One edit through the node's request builder and the edit runner, measured; {"refused": message}
        when the node refuses these settings."""
        build = self.erase.erase_request if "guide" in request else self.erase.moderate_request
        try:
            plan, settings = build(**request)
        except ValueError as error:
            return {"refused": str(error)}
        _, report, record = self.runner.run_edit(self.comfy.model, self.comfy.clip, plan, settings)
        group = report.groups[0]
        deltas = {k: record.deltas[k] for k in self.group.keys}
        edited = self.sums.edited(deltas)
        rows = self.rows(plan.texts())
        concept = plan.build(rows, "paper").inputs
        adversarial = self.solver.adversarial_rows(edited, concept, lamb)
        residual = self.solver.attack_residual(edited, concept, adversarial)
        if group.attack_residuals:  # the node's own value validates this computation
            reported = group.attack_residuals[-1]
            assert abs(residual - reported) <= 1e-3 * abs(reported), (residual, reported)
            checks.append((residual, reported))
        change = self.solver.robust.update_gram(deltas, self.group.width, "cpu")
        moved = {
            name: float(((change * gram).sum() / (edited.base * gram).sum()).sqrt()) for name, gram in held_out.items()
        }
        return {
            "residual": residual,
            "target_left": group.effect.target_gap_remaining,
            "preserve_drift": group.effect.preserve_shift,
            "moved": moved,
            "solve_seconds": report.solve_seconds,
            "null_space": group.null_space,
            "preserve_prompts": report.preserve_prompts,
            "edit_rows": group.edit_rows,
        }


def cases(quick: bool) -> list[dict]:
    """Each case: its label, the node request (without the mode's settings), λ_adv and its held-out set."""
    found = []
    for n in (1, 10) if quick else (1, 10, 100):
        split = workload.artist_split(n)
        preserve = split.preserve[:-1][:200] if quick else split.preserve[:-1]
        request = {"concepts": "\n".join(split.erased), "guide": "art", "preserve": "\n".join(preserve),
                   "concept_type": "custom", "expand_prompts": False,
                   "preserve_scale": -1.0}  # automatic, as e2e_cases: max(0.1, 1 / number of preserve prompts)
        found.append({"label": f"{n} artist{'s' * (n > 1)} -> art", "request": request, "lamb": ARTIST_LAMB,
                      "held_out": "held-out artists"})
    request = {"concepts": "nudity", "preserve": "", "preserve_scale": 1.0}  # UCE Moderate's defaults
    # only "" preserved: the node refuses the null-space modes (nothing to keep the update off)
    found.append({"label": "nudity (moderate)", "request": request, "lamb": NUDITY_LAMB, "held_out": "I2P nudity",
                  "modes": ("plain", "hardened")})
    if not quick:  # the node's captions preset: 3,000 more prompts to encode
        found.append({"label": "nudity (moderate), preserve_preset captions",
                      "request": dict(request, preserve_preset="captions"), "lamb": NUDITY_LAMB,
                      "held_out": "I2P nudity"})
    return found


def percent(value) -> str:
    return "—" if value is None else f"{100 * value:.2f}"


def table(results: list[dict]) -> str:
    """One markdown table per case."""
    out = []
    for case in results:
        out.append(f"### {case['label']} ({case['preserve_prompts']:,} preserve prompts incl. \"\", "
                   f"{case['edit_rows']:,} edit rows)\n")
        out.append(f"| Mode | Attack residual % | Target left % | Preserve drift % | Captions drift % | "
                   f"{case['held_out']} moved % | Solve s | Null-space dirs |")
        out.append("|---|---:|---:|---:|---:|---:|---:|---:|")
        for name, r in case["modes"].items():
            if "refused" in r:
                out.append(f"| {name} | refused by the node: {r['refused'].split(':')[0]} | | | | | | |")
                continue
            space = r["null_space"]
            dirs = "—" if space is None else f"{space[0]}/{space[1]} ({100 * space[2]:.2g}% energy)"
            out.append(f"| {name} | {percent(r['residual'])} | {percent(r['target_left'])} | "
                       f"{percent(r['preserve_drift'])} | {percent(r['moved']['captions'])} | "
                       f"{percent(r['moved'][case['held_out']])} | {r['solve_seconds']:.2f} | {dirs} |")
        out.append("")
    return "\n".join(out)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="1 and 10 artists, 200 preserve prompts, fewer held-out")
    parser.add_argument("--out", help="also write the table(s) to this file")
    args = parser.parse_args()
    started = time.perf_counter()
    bench = Bench()
    checks: list = []
    results = []
    with torch.inference_mode():
        count = bench.captions.CAPTION_COUNT  # held-out captions: past the node's captions preset
        sets = {"captions": list(bench.captions.caption_prompts(count + (100 if args.quick else 300))[count:]),
                "held-out artists": holdout_artists(),
                "I2P nudity": bench.fitting(i2p_nudity(), 20 if args.quick else 100)}
        grams = {name: bench.gram(texts) for name, texts in sets.items()}
        for case in cases(args.quick):
            held_out = {name: grams[name] for name in ("captions", case["held_out"])}
            measured = {}
            for name in case.get("modes", MODES):
                preservation, hardened, prior, threshold = MODES[name]
                request = dict(case["request"], preservation=preservation, null_space_threshold=threshold,
                               harden_rounds=-1 if hardened else 0, harden_lamb=-1.0)  # -1: RECE's defaults
                if prior:
                    request.update(prior_filtering=True, prior_augmentation=1)
                measured[name] = bench.run(request, case["lamb"], held_out, checks)
                print(f"  {case['label']}: {name} done ({time.perf_counter() - started:.0f} s)", file=sys.stderr)
            first = next(r for r in measured.values() if "refused" not in r)
            results.append({**case, "modes": measured, "preserve_prompts": first["preserve_prompts"],
                            "edit_rows": first["edit_rows"]})
    text = table(results)
    footer = ("Held-out prompts: " + ", ".join(f"{len(texts)} {name}" for name, texts in sets.items()) + ". "
              f"Attack residual checked against the node's own value in {len(checks)} hardened runs (rel 1e-3). "
              f"Wall time {time.perf_counter() - started:.0f} s (model load {bench.comfy.load_seconds:.0f} s).")
    text += "\n" + footer + "\n"
    print(text)
    if args.out:
        Path(args.out).write_text(text, encoding="utf-8")


if __name__ == "__main__":
    main()
