"""Weight updates ΔW as the solver returns them: low-rank (up @ down) or dense."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Iterable, Union

import torch


@dataclass(frozen=True)
class LowRankDelta:
    """ΔW = up @ down; ``down`` is shared by every layer of the same edit and width."""

    up: torch.Tensor  # [d_out, r]
    down: torch.Tensor  # [r, d]

    @property
    def shape(self) -> tuple[int, int]:
        return (self.up.shape[0], self.down.shape[1])

    def dense(self) -> torch.Tensor:
        return self.up @ self.down

    def tensors(self) -> tuple[torch.Tensor, ...]:
        return (self.up, self.down)


@dataclass(frozen=True)
class DenseDelta:
    """ΔW stored as a full [d_out, d] matrix (cheaper once the rank nears the width)."""

    delta: torch.Tensor

    @property
    def shape(self) -> tuple[int, int]:
        return tuple(self.delta.shape)

    def dense(self) -> torch.Tensor:
        return self.delta

    def tensors(self) -> tuple[torch.Tensor, ...]:
        return (self.delta,)


Delta = Union[LowRankDelta, DenseDelta]


def prefers_low_rank(rank: int, out_features: int, in_features: int) -> bool:
    """Low-rank storage holds rank * (d_out + d) numbers, dense d_out * d: take the smaller."""
    return rank * (out_features + in_features) < out_features * in_features


def storage_bytes(deltas: Iterable[Delta]) -> int:
    """Bytes held by the deltas, counting a shared tensor once."""
    seen: dict[int, int] = {}
    for delta in deltas:
        for t in delta.tensors():
            seen[id(t)] = t.numel() * t.element_size()
    return sum(seen.values())
