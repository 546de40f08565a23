"""A UCE edit as data (the nodes' ``edit`` output): the weight updates and what made them.

What a save node writes as a LoRA file and a probe node reads: every updated
weight's ΔW at strength 1 (low-rank or dense, keyed by the MODEL's own weight
keys), the strength the node applied, and a description of the edit (method,
concepts and guides, preserve list, scales, token mode, base model family and a
fingerprint of the base weights it was solved on).
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass, field
from typing import Mapping

import torch

from ..uce_solver import Delta

EDIT_TYPE = "UCE_EDIT"
PACK_NAME = "comfyui-unified-concept-editing"
FINGERPRINT_SAMPLE = 4096


@dataclass(frozen=True)
class EditRecord:
    """Weight updates of one UCE edit. ``deltas``: model key ("diffusion_model.….weight") -> ΔW at strength 1."""

    deltas: Mapping[str, Delta]
    strength: float
    family: str  # the pack's family entry, e.g. "SD1.x", "Flux.1"
    model_class: str  # ComfyUI's config class of the MODEL, e.g. "SD15"
    description: Mapping[str, str] = field(default_factory=dict)

    @property
    def keys(self) -> list[str]:
        return list(self.deltas)


def describe(plan, settings, family_name: str, base_fingerprint: str, pooled: bool) -> dict[str, str]:
    """The edit's description as flat strings (safetensors metadata holds only strings)."""
    from .edit_runner import DebiasPlan  # the plans live with the runner

    if isinstance(plan, DebiasPlan):
        edited = {"prompts": [prompt for prompt, _ in plan.items], "attributes": plan.items[0][1] if plan.items else []}
        edited["weights"] = plan.weights
    else:
        edited = {"pairs": [[concept, guide] for concept, guide in plan.pairs]}
    preserve = "\n".join(settings.preserve)
    return {
        "uce.method": f"UCE {plan.label}",
        "uce.edited": json.dumps(edited, ensure_ascii=False),
        "uce.preserve_prompts": str(len(settings.preserve)),
        "uce.preserve_sha256": hashlib.sha256(preserve.encode("utf-8")).hexdigest(),
        "uce.scales": json.dumps({"erase": settings.scales.erase, "preserve": settings.scales.preserve,
                                  "lamb": settings.scales.lamb}),
        "uce.strength": repr(settings.strength),
        "uce.token_mode": settings.token_mode,
        "uce.projections": settings.projections,
        "uce.pooled": "on" if pooled else "off",
        "uce.preservation": _preservation(settings),
        "uce.hardening": json.dumps({"rounds": settings.hardening.rounds, "lamb_adv": settings.hardening.lamb}),
        "uce.family": family_name,
        "uce.base_weights_sha256": base_fingerprint,
        "uce.pack": f"{PACK_NAME} {pack_version()}",
    }


def weights_fingerprint(weights: Mapping[str, torch.Tensor]) -> str:
    """sha256 over each weight's key, shape, float64 sum and sum of squares and a strided sample of its values:
    cheap even for a 14B model's K/V weights, and any real change of a weight changes it."""
    digest = hashlib.sha256()
    for key in sorted(weights):
        value = weights[key].detach()
        flat = value.reshape(-1)
        sample = flat[:: max(1, flat.numel() // FINGERPRINT_SAMPLE)].to("cpu", torch.float32).contiguous()
        sums = torch.stack([flat.double().sum(), flat.double().square().sum()]).cpu()
        digest.update(f"{key}:{tuple(value.shape)}:{str(value.dtype)}".encode())
        digest.update(sums.numpy().tobytes())
        digest.update(sample.numpy().tobytes())
    return digest.hexdigest()


def pack_version() -> str:
    """The version in the pack's pyproject.toml."""
    from pathlib import Path

    try:
        import tomllib
    except ImportError:  # Python 3.10
        return "unknown"
    pyproject = Path(__file__).resolve().parents[1] / "pyproject.toml"
    try:
        return tomllib.loads(pyproject.read_text(encoding="utf-8"))["project"]["version"]
    except (OSError, KeyError, ValueError):
        return "unknown"


def _preservation(settings) -> str:
    """"paper", or "null_space (threshold t[, prior filtering][, prior augmentation n])"."""
    if settings.preservation != "null_space":
        return settings.preservation
    parts = [f"threshold {settings.null_space_threshold:g}"]
    if settings.prior_filtering:
        parts.append("prior filtering")
    if settings.prior_augmentation:
        parts.append(f"prior augmentation {settings.prior_augmentation}")
    return f"null_space ({', '.join(parts)})"
