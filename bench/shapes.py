"""Cross-attention K/V weight shapes of real UNets (random values, stored fp16 like checkpoints)."""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass

import torch


@dataclass(frozen=True)
class ModelShapes:
    """``layers``: (patcher-style key, d_out) of every attn2.to_k / to_v matrix; all read ``width``."""

    name: str
    width: int
    layers: tuple[tuple[str, int], ...]

    @property
    def count(self) -> int:
        return len(self.layers)

    def classes(self) -> Counter:
        """How many matrices of each d_out."""
        return Counter(d_out for _, d_out in self.layers)

    def representatives(self) -> list[str]:
        """One key per distinct d_out (the first of each), in model order."""
        seen, keys = set(), []
        for key, d_out in self.layers:
            if d_out not in seen:
                seen.add(d_out)
                keys.append(key)
        return keys

    def d_out(self, key: str) -> int:
        return dict(self.layers)[key]

    def dense_fp16_bytes(self) -> int:
        return sum(2 * d_out * self.width for _, d_out in self.layers)


def _kv(blocks: list[tuple[str, int, int]]) -> tuple[tuple[str, int], ...]:
    """(block prefix, transformer depth, channels) -> K and V keys of every transformer block."""
    layers = []
    for prefix, depth, channels in blocks:
        for t in range(depth):
            for proj in ("k", "v"):
                layers.append((f"diffusion_model.{prefix}.1.transformer_blocks.{t}.attn2.to_{proj}.weight", channels))
    return tuple(layers)


# SD1.5: 16 transformer blocks of depth 1 (input 1,2 / 4,5 / 7,8, middle, output 3-5 / 6-8 / 9-11).
SD15 = ModelShapes(
    "SD1.5",
    768,
    _kv(
        [(f"input_blocks.{i}", 1, 320) for i in (1, 2)]
        + [(f"input_blocks.{i}", 1, 640) for i in (4, 5)]
        + [(f"input_blocks.{i}", 1, 1280) for i in (7, 8)]
        + [("middle_block", 1, 1280)]
        + [(f"output_blocks.{i}", 1, 1280) for i in (3, 4, 5)]
        + [(f"output_blocks.{i}", 1, 640) for i in (6, 7, 8)]
        + [(f"output_blocks.{i}", 1, 320) for i in (9, 10, 11)]
    ),
)

# SDXL: 70 transformer blocks (depth 2 at 640 channels, depth 10 at 1280; none at the first level).
SDXL = ModelShapes(
    "SDXL",
    2048,
    _kv(
        [(f"input_blocks.{i}", 2, 640) for i in (4, 5)]
        + [(f"input_blocks.{i}", 10, 1280) for i in (7, 8)]
        + [("middle_block", 10, 1280)]
        + [(f"output_blocks.{i}", 10, 1280) for i in (0, 1, 2)]
        + [(f"output_blocks.{i}", 2, 640) for i in (3, 4, 5)]
    ),
)

assert SD15.count == 32 and SDXL.count == 140


def tiny(name: str = "tiny", width: int = 64, d_outs: tuple[int, ...] = (32, 48)) -> ModelShapes:
    """A few small matrices, for the smoke run."""
    return ModelShapes(name, width, tuple((f"layer{i}.attn2.to_k.weight", d) for i, d in enumerate(d_outs)))


def random_weights(shapes: ModelShapes, device, seed: int = 0) -> dict[str, torch.Tensor]:
    """fp16 weights ~ N(0, 1/d) (the scale of trained K/V projections), generated on ``device``."""
    gen = torch.Generator(device=device).manual_seed(seed)
    return {
        key: (torch.randn(d_out, shapes.width, generator=gen, device=device) / shapes.width**0.5).half()
        for key, d_out in shapes.layers
    }
