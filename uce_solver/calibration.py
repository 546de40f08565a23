"""The debias calibration loop of the UCE paper's 2023 code (v1), without ComfyUI.

Each round measures the share of each attribute in images of every profession not yet balanced,
then edits those professions once more with weights ``gain * (desired - observed)``. Edits
compound (each round solves on the current edited weights), but a round's targets use only that
round's weights: nothing is accumulated across rounds. A profession within ``tolerance`` of the
desired shares is balanced: it is no longer edited and joins the preserve list.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field

PAPER_GAIN = 0.1
PAPER_TOLERANCE = 0.05
PAPER_MAX_ROUNDS = 30


def observed_shares(labels: Sequence[int], attributes: int) -> list[float]:
    """Share of each attribute among classified images (argmax labels, one-hot, mean)."""
    if not labels:
        raise ValueError("no classified images to take shares from")
    counts = [0] * attributes
    for label in labels:
        counts[label] += 1
    return [count / len(labels) for count in counts]


def max_change(shares: Sequence[float], desired: Sequence[float]) -> float:
    """max_a |share_a - desired_a|: how far the observed mix is from the desired one."""
    if len(shares) != len(desired):
        raise ValueError(f"{len(shares)} shares for {len(desired)} desired shares")
    return max(abs(s - d) for s, d in zip(shares, desired))


def balanced(shares: Sequence[float], desired: Sequence[float], tolerance: float) -> bool:
    """The paper's stop rule for one profession: every share within ``tolerance`` of the desired one."""
    return max_change(shares, desired) <= tolerance


def next_weights(shares: Sequence[float], desired: Sequence[float], gain: float = PAPER_GAIN) -> list[float]:
    """The paper's update: w_a = gain * (desired_a - share_a), this round's weights only."""
    if len(shares) != len(desired):
        raise ValueError(f"{len(shares)} shares for {len(desired)} desired shares")
    return [gain * (d - s) for s, d in zip(shares, desired)]


@dataclass
class Round:
    """One round: the shares measured, who was balanced by them, and the weights solved after."""

    index: int
    shares: dict[str, list[float]]
    balanced: list[str]  # professions balanced after this round's measurement (all so far)
    weights: dict[str, list[float]] = field(default_factory=dict)  # empty when nothing was solved


@dataclass
class Calibration:
    rounds: list[Round]
    converged: bool

    @property
    def balanced(self) -> list[str]:
        return self.rounds[-1].balanced if self.rounds else []


def calibrate(
    professions: Sequence[str],
    desired: Mapping[str, Sequence[float]],
    observe: Callable[[int, str], Sequence[int]],
    solve: Callable[[int, dict[str, list[float]], list[str]], None],
    tolerance: float = PAPER_TOLERANCE,
    max_rounds: int = PAPER_MAX_ROUNDS,
    gain: float = PAPER_GAIN,
) -> Calibration:
    """Run the loop: ``observe(round, profession)`` gives the attribute index of each image sampled with
    the current model; ``solve(round, weights, balanced)`` edits the current model once more with
    ``weights`` (profession -> one weight per attribute) and preserves the ``balanced`` professions.

    At most ``max_rounds`` solves; stops as soon as every profession is balanced.
    """
    if max_rounds < 1:
        raise ValueError(f"max_rounds must be at least 1, got {max_rounds}")
    done: list[str] = []
    rounds: list[Round] = []
    for index in range(max_rounds):
        active = [p for p in professions if p not in done]
        shares = {}
        for profession in active:
            wanted = desired[profession]
            shares[profession] = observed_shares(observe(index, profession), len(wanted))
            if balanced(shares[profession], wanted, tolerance):
                done.append(profession)
        step = Round(index, shares, list(done))
        rounds.append(step)
        if len(done) == len(professions):
            return Calibration(rounds, True)
        step.weights = {p: next_weights(shares[p], desired[p], gain) for p in active if p not in done}
        solve(index, step.weights, list(done))
    return Calibration(rounds, False)
