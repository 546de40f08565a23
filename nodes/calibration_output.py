"""What UCE Debias (calibrated) hands back besides the model: the summed edit, the chart, the report, the image grid."""

from __future__ import annotations

import json
from dataclasses import replace

import torch

from ..uce_solver import DenseDelta, LowRankDelta
from ..uce_solver.calibration import Calibration, max_change
from .edit_record import EditRecord
from .probe import _figure_image


def sum_deltas(records: list[EditRecord]) -> dict:
    """Every key's ΔW summed over the rounds' records: low-rank parts stacked (exact, rank adds up; a shared
    ``down`` stays shared), dense once any round's ΔW for that key is dense."""
    total: dict = {}
    stacked_downs: dict = {}
    for record in records:
        for key, delta in record.deltas.items():
            before = total.get(key)
            if before is None:
                total[key] = delta
            elif isinstance(before, LowRankDelta) and isinstance(delta, LowRankDelta):
                pair = (id(before.down), id(delta.down))
                if pair not in stacked_downs:
                    stacked_downs[pair] = torch.cat([before.down, delta.down], dim=0)
                total[key] = LowRankDelta(torch.cat([before.up, delta.up], dim=1), stacked_downs[pair])
            else:
                total[key] = DenseDelta(before.dense() + delta.dense())
    return total


def summed_record(records: list[EditRecord], calibration: Calibration, settings_text: dict) -> EditRecord:
    """One record for the whole calibration: deltas summed over the rounds, the first round's base fingerprint."""
    first, last = records[0], records[-1]
    description = dict(last.description)
    description["uce.base_weights_sha256"] = first.description.get("uce.base_weights_sha256", "")
    description["uce.method"] = "UCE debias (calibrated)"
    description["uce.calibration"] = json.dumps(
        {
            **settings_text,
            "rounds": [{"shares": r.shares, "weights": r.weights} for r in calibration.rounds],
            "converged": calibration.converged,
        },
        ensure_ascii=False,
    )
    return replace(last, deltas=sum_deltas(records), description=description)


def report_text(calibration: Calibration, attributes: list[str], desired: dict, times: dict, tolerance: float) -> str:
    """One line per round and profession: shares, max change, weights solved; then time per round."""
    status = "converged" if calibration.converged else "stopped at max_rounds"
    lines = [
        (f"UCE Debias (calibrated): {len(calibration.rounds)} rounds, {status}; tolerance {tolerance:g}; "
         f"attributes: {', '.join(attributes)}"),
        "round | profession | shares | desired | max change | weights",
    ]
    for step in calibration.rounds:
        for profession, shares in step.shares.items():
            weights = step.weights.get(profession)
            lines.append(
                f"{step.index + 1} | {profession} | {_numbers(shares)} | {_numbers(desired[profession])} | "
                f"{max_change(shares, desired[profession]):.3f} | "
                + (_numbers(weights, '+.4f') if weights else "balanced" if profession in step.balanced else "-")
            )
    lines.append("round | solve s | sample s | classify s")
    for step in calibration.rounds:
        t = times.get(step.index, {})
        lines.append(f"{step.index + 1} | {t.get('solve', 0.0):.2f} | {t.get('sample', 0.0):.2f} | "
                     f"{t.get('classify', 0.0):.2f}")
    total = {k: sum(t.get(k, 0.0) for t in times.values()) for k in ("solve", "sample", "classify")}
    lines.append(f"total | {total['solve']:.2f} | {total['sample']:.2f} | {total['classify']:.2f}")
    return "\n".join(lines)


def _numbers(values, spec: str = ".2f") -> str:
    return ", ".join(format(v, spec) for v in values)


def render_chart(calibration: Calibration, attributes: list[str], desired: dict, tolerance: float) -> torch.Tensor:
    """Observed share of each attribute per profession over the rounds, desired share dashed: an IMAGE."""
    from matplotlib.figure import Figure

    shown = attributes[:6]
    figure = Figure(figsize=(4.2 * len(shown), 4.0), dpi=100, layout="constrained")
    figure.suptitle("UCE Debias (calibrated): observed share per round")
    axes = figure.subplots(1, len(shown), squeeze=False)[0]
    professions = list(desired)
    for a, (ax, attribute) in enumerate(zip(axes, shown)):
        for p, profession in enumerate(professions):
            points = [(r.index + 1, r.shares[profession][a]) for r in calibration.rounds if profession in r.shares]
            color = f"C{p % 10}"
            ax.plot([x for x, _ in points], [y for _, y in points], "o-", color=color, label=profession)
            target = desired[profession][a]
            ax.axhline(target, color=color, linestyle="--", linewidth=0.8)
            ax.axhspan(target - tolerance, target + tolerance, color=color, alpha=0.06)
        ax.set_title(attribute)
        ax.set_xlabel("round")
        ax.set_ylabel("share")
        ax.set_ylim(-0.05, 1.05)
        ax.grid(alpha=0.3)
        if len(professions) <= 10:
            ax.legend(fontsize=8)
    return _figure_image(figure)


def image_grid(images: dict[str, torch.Tensor]) -> torch.Tensor:
    """The last round's images: one row per profession, one column per image, as one IMAGE [1, H, W, 3]."""
    rows = [batch for batch in images.values() if batch is not None and len(batch)]
    if not rows:
        return torch.zeros(1, 64, 64, 3)
    height = max(r.shape[1] for r in rows)
    width = max(r.shape[2] for r in rows)
    columns = max(len(r) for r in rows)
    grid = torch.zeros(len(rows) * height, columns * width, 3)
    for i, batch in enumerate(rows):
        for j, image in enumerate(batch):
            grid[i * height:i * height + image.shape[0], j * width:j * width + image.shape[1]] = image[..., :3].cpu()
    return grid.unsqueeze(0)
