"""The fast solver against the naive reference, and its contracts (pure torch, no ComfyUI)."""

from __future__ import annotations

import random
import zlib
from dataclasses import dataclass

import pytest
import torch

import uce_reference as ref

SLOTS = 77
LAYER_OUTPUTS = {768: (320, 1280), 1024: (320, 1280), 2048: (640, 1280)}


@dataclass(frozen=True)
class Case:
    kind: str  # erase | moderate | debias
    mode: str  # paper | last_token
    width: int
    concepts: int
    preserve: int
    ill_conditioned: bool = False
    attributes: int = 2

    def __str__(self):
        ill = "-ill" if self.ill_conditioned else ""
        return f"{self.kind}-{self.mode}-d{self.width}-c{self.concepts}-p{self.preserve}{ill}"


FIXED_CASES = [
    Case("erase", "paper", 768, 1, 0),
    Case("erase", "paper", 768, 200, 0),
    Case("erase", "last_token", 768, 200, 2000),
    Case("erase", "paper", 1024, 20, 100),
    Case("erase", "paper", 2048, 5, 20),
    Case("erase", "paper", 768, 3, 500, ill_conditioned=True),
    Case("erase", "last_token", 2048, 50, 1000, ill_conditioned=True),
    Case("moderate", "paper", 768, 1, 1),
    Case("moderate", "last_token", 1024, 1, 1),
    Case("debias", "paper", 768, 3, 50),
    Case("debias", "last_token", 2048, 10, 100, attributes=3),
    Case("debias", "paper", 1024, 8, 0, attributes=5),
]


def random_cases(count: int, seed: int = 1234) -> list[Case]:
    """Seeded random cases over the issue's ranges, capped so the naive reference stays quick."""
    rng = random.Random(seed)
    cases = []
    for _ in range(count):
        kind = rng.choice(["erase", "moderate", "debias"])
        mode = rng.choice(["paper", "last_token"])
        width = rng.choice([768, 1024, 2048])
        concepts = 1 if kind == "moderate" else rng.randint(1, 200 if mode == "last_token" else 20)
        preserve = rng.randint(0, 2000 if mode == "last_token" else 60)
        cases.append(Case(kind, mode, width, concepts, preserve, rng.random() < 0.3, rng.randint(2, 4)))
    return cases


CASES = FIXED_CASES + random_cases(8)


def make_rows(gen, width, dtype, ill_conditioned=False, count=SLOTS):
    """Synthetic conditioning rows with a shared component, like real text encoders give.

    Ill-conditioned rows lie near a 4-dimensional subspace with large norms, so
    M = lamb I + ... has a condition number of 1e5 to 1e8 (real preserve lists of
    ~1,700 artists give about 1e7).
    """
    if ill_conditioned:
        basis = torch.randn(4, width, generator=gen, dtype=dtype)
        rows = torch.randn(count, 4, generator=gen, dtype=dtype) @ basis * 3
        rows += 1e-4 * torch.randn(count, width, generator=gen, dtype=dtype)
    else:
        rows = torch.randn(count, width, generator=gen, dtype=dtype)
        rows += 0.5 * torch.randn(1, width, generator=gen, dtype=dtype)
    return rows


def build_case(solver, case: Case, dtype):
    gen = torch.Generator().manual_seed(zlib.crc32(str(case).encode()))
    lasts = torch.randint(0, 12, (10_000,), generator=gen).tolist()

    def prompt(text, empty=False):
        last = 0 if empty else lasts.pop()
        return solver.EncodedPrompt(text, make_rows(gen, case.width, dtype), last)

    weights = {
        f"layer{i}.to_{kv}": torch.randn(d_out, case.width, generator=gen).to(dtype) / case.width**0.5
        for i, d_out in enumerate(LAYER_OUTPUTS[case.width])
        for kv in ("k", "v")
    }
    keep_rows = make_rows(gen, case.width, dtype, case.ill_conditioned, SLOTS * case.preserve).view(-1, SLOTS, case.width)
    preserve = [
        solver.EncodedPrompt(f"keep {i}", rows, 0 if case.kind == "moderate" else lasts.pop())
        for i, rows in enumerate(keep_rows)
    ]
    scales = solver.Scales(erase=1.0, preserve=max(0.1, 1 / max(1, case.preserve)), lamb=0.5)
    if case.kind == "debias":
        items = [
            (prompt(f"profession {i}"), [prompt(f"attribute {a}") for a in range(case.attributes)])
            for i in range(case.concepts)
        ]
        attribute_weights = torch.randn(case.concepts, case.attributes, generator=gen).mul(0.3).tolist()
        edit = solver.debias_edit(items, attribute_weights, case.mode)
        expected = ref.reference_debias(
            weights,
            [((p.rows, p.last), [(a.rows, a.last) for a in attrs], w) for (p, attrs), w in zip(items, attribute_weights)],
            [(p.rows, p.last) for p in preserve],
            case.mode,
            scales.erase,
            scales.preserve,
            scales.lamb,
        )
    else:
        pairs = [(prompt(f"concept {i}"), prompt("guide", empty=case.kind == "moderate")) for i in range(case.concepts)]
        edit = solver.erase_edit(pairs, case.mode)
        expected = ref.reference_erase(
            weights,
            [((c.rows, c.last), (g.rows, g.last)) for c, g in pairs],
            [(p.rows, p.last) for p in preserve],
            case.mode,
            scales.erase,
            scales.preserve,
            scales.lamb,
        )
    preserve_rows = [solver.preserve_rows(p, case.mode) for p in preserve]
    return weights, edit, preserve_rows, scales, expected


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32], ids=["f64", "f32"])
@pytest.mark.parametrize("case", CASES, ids=str)
def test_fast_solver_matches_naive_reference(solver, case, dtype):
    weights, edit, preserve_rows, scales, expected = build_case(solver, case, dtype)
    solution = solver.solve(weights, edit, preserve_rows, scales)
    tolerance = 1e-6 if dtype == torch.float64 else 1e-4
    assert set(solution.deltas) == set(expected)
    worst = 0.0
    for key, delta in solution.deltas.items():
        got = delta.dense().double()
        assert got.shape == weights[key].shape
        error = torch.linalg.norm(got - expected[key]) / torch.linalg.norm(expected[key])
        worst = max(worst, error.item())
    assert worst <= tolerance, f"{case} {dtype}: largest relative error {worst:.2e}"
    if case.ill_conditioned:
        c, p = edit.inputs.double(), torch.cat(preserve_rows).double()
        gram = scales.lamb * torch.eye(case.width, dtype=torch.float64) + scales.erase * c.T @ c + scales.preserve * p.T @ p
        assert torch.linalg.cond(gram) > 1e5  # the case really is ill-conditioned


def test_low_rank_when_smaller_dense_otherwise(solver):
    gen = torch.Generator().manual_seed(0)
    weights = {"small": torch.randn(320, 768, generator=gen), "large": torch.randn(1280, 768, generator=gen)}

    def edit_with(concepts):
        pairs = [
            (solver.EncodedPrompt("c", torch.randn(SLOTS, 768, generator=gen), 2), solver.EncodedPrompt("", torch.randn(SLOTS, 768, generator=gen), 0))
            for _ in range(concepts)
        ]
        return solver.erase_edit(pairs, "paper")

    one = solver.solve(weights, edit_with(1), None).deltas  # 75 rows
    assert all(isinstance(d, solver.LowRankDelta) for d in one.values())
    assert one["small"].down is one["large"].down  # one shared factor for all layers
    assert solver.storage_bytes(one.values()) < 0.2 * sum(w.numel() * 4 for w in weights.values())
    many = solver.solve(weights, edit_with(10), None).deltas  # 750 rows > what low rank saves
    assert all(isinstance(d, solver.DenseDelta) for d in many.values())


def test_deltas_handed_off_in_the_patch_dtype(solver):
    """out_dtype: every delta is cast as its group is made (shared down kept shared); fp16 overflow is refused."""
    gen = torch.Generator().manual_seed(1)
    weights = {"small": torch.randn(320, 768, generator=gen), "large": torch.randn(1280, 768, generator=gen)}
    concept = solver.EncodedPrompt("c", torch.randn(SLOTS, 768, generator=gen), 2)
    guide = solver.EncodedPrompt("", torch.randn(SLOTS, 768, generator=gen), 0)
    edit = solver.erase_edit([(concept, guide)], "paper")
    full = solver.solve(weights, edit, None).deltas
    half = solver.solve(weights, edit, None, out_device="cpu", out_dtype=torch.float16).deltas
    assert all(t.dtype == torch.float16 for d in half.values() for t in d.tensors())
    assert half["small"].down is half["large"].down
    for key in weights:
        assert torch.equal(half[key].up, full[key].up.half()) and torch.equal(half[key].down, full[key].down.half())
    with pytest.raises(solver.NonFiniteEditError, match="NaN or infinite"):
        solver.solve({k: w * 1e6 for k, w in weights.items()}, edit, None, out_dtype=torch.float16)


def test_paper_alignment_slices(solver):
    rows = torch.arange(SLOTS, dtype=torch.float64).unsqueeze(1).repeat(1, 4)
    concept = solver.EncodedPrompt("van gogh", rows, 2)
    guide = solver.EncodedPrompt("art", rows + 100, 1)
    c, g = solver.aligned_rows([concept, guide], "paper")
    assert c[:, 0].tolist() == list(range(2, 77))  # last concept token, EOS and padding
    assert g[:, 0].tolist() == [x + 100 for x in range(1, 76)]  # guide shifted to align, same length
    c, g = solver.aligned_rows([concept, guide], "last_token")
    assert c[:, 0].tolist() == [2] and g[:, 0].tolist() == [101]
    assert solver.preserve_rows(concept, "paper").shape[0] == SLOTS
    assert solver.preserve_rows(concept, "last_token")[:, 0].tolist() == [2]


def test_edit_lands_on_targets_and_preserve_stays(solver):
    """With a tiny lamb and few rows, edited rows reach their targets exactly; a strong preserve term keeps rows put."""
    gen = torch.Generator().manual_seed(3)
    d = 64
    w0 = {"w": torch.randn(32, d, generator=gen, dtype=torch.float64)}
    concept = solver.EncodedPrompt("c", torch.randn(8, d, generator=gen, dtype=torch.float64), 1)
    guide = solver.EncodedPrompt("g", torch.randn(8, d, generator=gen, dtype=torch.float64), 1)
    keep = torch.randn(10, d, generator=gen, dtype=torch.float64)
    edit = solver.erase_edit([(concept, guide)], "paper")
    solution = solver.solve(w0, edit, keep, solver.Scales(erase=1.0, preserve=1.0, lamb=1e-9))
    effect = solver.measure_effect(w0, solution.deltas, edit, keep)
    assert effect.target_gap_remaining < 1e-6
    assert effect.preserve_shift < 1e-6
    half = solver.measure_effect(w0, solution.deltas, edit, keep, strength=0.5)
    assert abs(half.target_gap_remaining - 0.5) < 1e-6  # strength is linear


def test_solver_errors_are_clear(solver):
    gen = torch.Generator().manual_seed(0)
    p = solver.EncodedPrompt("c", torch.randn(SLOTS, 768, generator=gen), 1)
    edit = solver.erase_edit([(p, p)], "paper")
    with pytest.raises(ValueError, match="input width 1024 does not match the text rows' width 768"):
        solver.solve({"k": torch.zeros(320, 1024)}, edit)
    with pytest.raises(ValueError, match="lamb must be > 0"):
        solver.solve({"k": torch.zeros(320, 768)}, edit, scales=solver.Scales(lamb=0))
    bad = torch.randn(SLOTS, 768, generator=gen)
    bad[5, 3] = float("nan")
    with pytest.raises(solver.NonFiniteEditError, match="NaN"):
        solver.solve({"k": torch.zeros(320, 768)}, solver.erase_edit([(solver.EncodedPrompt("c", bad, 1), p)], "paper"))
    with pytest.raises(ValueError, match="unknown token mode"):
        solver.erase_edit([(p, p)], "first_token")
    with pytest.raises(ValueError, match="at least one concept"):
        solver.erase_edit([], "paper")
    with pytest.raises(ValueError, match="one per attribute"):
        solver.debias_edit([(p, [p, p])], [0.1, 0.2, 0.3], "paper")


def test_streamed_preserve_equals_one_tensor(solver):
    """Preserve rows given in chunks give the same update as one tensor (streaming accumulation)."""
    gen = torch.Generator().manual_seed(5)
    weights = {"k": torch.randn(320, 768, generator=gen, dtype=torch.float64)}
    p = solver.EncodedPrompt("c", torch.randn(SLOTS, 768, generator=gen, dtype=torch.float64), 3)
    g = solver.EncodedPrompt("g", torch.randn(SLOTS, 768, generator=gen, dtype=torch.float64), 1)
    keep = torch.randn(20_000, 768, generator=gen, dtype=torch.float64)
    edit = solver.erase_edit([(p, g)], "paper")
    whole = solver.solve(weights, edit, keep).deltas["k"].dense()
    chunked = solver.solve(weights, edit, iter(keep.split(3000))).deltas["k"].dense()
    assert torch.allclose(whole, chunked, rtol=1e-10, atol=1e-12)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA device on this machine")
def test_cuda_matches_cpu(solver):
    weights, edit, preserve_rows, scales, _ = build_case(solver, Case("erase", "paper", 768, 10, 100), torch.float32)
    cpu = solver.solve(weights, edit, preserve_rows, scales).deltas
    gpu = solver.solve(weights, edit.to("cuda"), [p.cuda() for p in preserve_rows], scales).deltas
    for key in cpu:
        assert next(iter(gpu[key].tensors())).is_cuda
        a, b = cpu[key].dense(), gpu[key].dense().cpu()
        assert torch.linalg.norm(a - b) / torch.linalg.norm(a) < 1e-4


# --- prompts made of encoder segments; maps with a bias -----------------------------------------


def test_t5_and_template_segments_align_end_markers(solver):
    """T5: an empty prompt has no content row, its EOS stands in; LLM templates: the suffix rows align."""
    seg = solver.Segment
    rows = torch.arange(10, dtype=torch.float64).unsqueeze(1)
    concept = solver.EncodedPrompt("cat", rows, segments=[seg(0, 10, 1)])  # [t0, cat, EOS, pad …]
    empty = solver.EncodedPrompt("", rows + 100, segments=[seg(0, 10, -1)])  # [EOS, pad …]
    c, g = solver.aligned_rows([concept, empty], "paper")
    assert c[:, 0].tolist() == list(range(1, 10))  # last token, EOS and the 7 pads
    assert g[:, 0].tolist() == [100, 100] + list(range(101, 108))  # EOS for the last token, then EOS↔EOS, pads↔pads
    c, g = solver.aligned_rows([concept, empty], "last_token")
    assert c[:, 0].tolist() == [1] and g[:, 0].tolist() == [100]
    assert solver.preserve_rows(empty, "last_token")[:, 0].tolist() == [100]

    # an unpadded chat template: [content …, 3 suffix rows]; different lengths align on the suffix
    long = solver.EncodedPrompt("a red car", torch.arange(6.0).unsqueeze(1), segments=[seg(0, 6, 2)])
    short = solver.EncodedPrompt("", torch.arange(3.0).unsqueeze(1) + 50, segments=[seg(0, 3, -1)])
    c, g = solver.aligned_rows([long, short], "paper")
    assert c[:, 0].tolist() == [2, 3, 4, 5] and g[:, 0].tolist() == [50, 50, 51, 52]


def test_segments_are_aligned_one_by_one(solver):
    """SD3-like rows: 77 CLIP rows then T5 rows; each part is aligned on its own last token."""
    seg = solver.Segment
    rows = torch.arange(154, dtype=torch.float64).unsqueeze(1)
    concept = solver.EncodedPrompt("van gogh", rows, segments=[seg(0, 77, 3), seg(77, 154, 2)])
    guide = solver.EncodedPrompt("art", rows + 1000, segments=[seg(0, 77, 1), seg(77, 154, 0)])
    c, g = solver.aligned_rows([concept, guide], "paper")
    assert c[:, 0].tolist() == list(range(3, 77)) + list(range(79, 154))
    assert g[:, 0].tolist() == [1000 + i for i in list(range(1, 75)) + list(range(77, 152))]
    c, g = solver.aligned_rows([concept, guide], "last_token")
    assert c[:, 0].tolist() == [3, 79] and g[:, 0].tolist() == [1001, 1077]
    assert solver.preserve_rows(concept, "last_token")[:, 0].tolist() == [3, 79]
    with pytest.raises(ValueError, match="do not tile"):
        solver.EncodedPrompt("bad", rows, segments=[seg(0, 77, 3), seg(78, 154, 2)])
    with pytest.raises(ValueError, match="same text encoders"):
        solver.aligned_rows([concept, solver.EncodedPrompt("one", rows, 3)], "paper")


def _affine_case(solver, gen, mode, layout):
    """Random prompts of a segment layout, weights with biases, as (fast inputs, reference inputs)."""
    width = 48

    def prompt(text, empty=False):
        segments, start = [], 0
        for length, rule in layout:
            last = (0 if rule == "clip" else -1) if empty else int(torch.randint(0, 4, (1,), generator=gen))
            segments.append(solver.Segment(start, start + length, last))
            start += length
        return solver.EncodedPrompt(text, make_rows(gen, width, torch.float64, count=start), segments=segments)

    weights = {f"map{i}": torch.randn(d_out, width, generator=gen, dtype=torch.float64) / width**0.5 for i, d_out in enumerate((32, 80))}
    biases = {k: 3.0 * torch.randn(w.shape[0], generator=gen, dtype=torch.float64) for k, w in weights.items()}
    pairs = [(prompt(f"concept {i}"), prompt("", empty=True)) for i in range(3)]
    preserve = [prompt(f"keep {i}") for i in range(4)] + [prompt("", empty=True)]
    as_ref = lambda p: (p.rows, [(s.start, s.stop, s.last) for s in p.segments])  # noqa: E731
    return weights, biases, pairs, preserve, [(as_ref(c), as_ref(g)) for c, g in pairs], [as_ref(p) for p in preserve]


@pytest.mark.parametrize("mode", ["paper", "last_token"])
@pytest.mark.parametrize(
    "layout",
    [((12, "t5"),), ((10, "clip"), (12, "t5")), ((9, "template"),)],
    ids=["t5", "clip+t5", "template"],
)
def test_affine_maps_match_the_naive_reference(solver, mode, layout):
    """Maps with a bias: the fast path (targets W0 g, bias kept) equals the affine closed form to 1e-6 in float64."""
    gen = torch.Generator().manual_seed(zlib.crc32(f"{mode}{layout}".encode()))
    weights, biases, pairs, preserve, ref_pairs, ref_preserve = _affine_case(solver, gen, mode, layout)
    scales = solver.Scales(erase=1.0, preserve=0.3, lamb=0.5)
    edit = solver.erase_edit(pairs, mode)
    kept = [solver.preserve_rows(p, mode) for p in preserve]
    fast = solver.solve(weights, edit, kept, scales).deltas
    expected = ref.reference_erase_affine(weights, biases, ref_pairs, ref_preserve, mode, 1.0, 0.3, 0.5)
    for key in weights:
        error = torch.linalg.norm(fast[key].dense() - expected[key]) / torch.linalg.norm(expected[key])
        assert error <= 1e-6, f"{key}: {error:.2e}"


def test_bias_counted_twice_misses_the_guide_by_the_bias(solver):
    """With b kept, aiming W at the full target W0 g + b (the authors' FLUX script) lands the output on
    W0 g + 2b; aiming at W0 g lands it on the guide's output W0 g + b."""
    gen = torch.Generator().manual_seed(11)
    weights, biases, pairs, _, ref_pairs, _ = _affine_case(solver, gen, "paper", ((12, "t5"),))
    tiny_lamb = solver.Scales(erase=1.0, preserve=1.0, lamb=1e-6)
    edit = solver.erase_edit(pairs[:1], "last_token")  # one row: reachable exactly
    ours = solver.solve(weights, edit, None, tiny_lamb).deltas
    doubled = ref.reference_erase_affine(weights, biases, ref_pairs[:1], [], "last_token", 1.0, 1.0, 1e-6, bias_in_targets=True)
    concept, guide = (rows.double() for rows in solver.aligned_rows(list(pairs[0]), "last_token"))
    for key, w0 in weights.items():
        b = biases[key]
        target = guide @ w0.T + b  # the guide's full output, bias included
        ours_out = concept @ (w0 + ours[key].dense()).T + b
        doubled_out = concept @ (w0 + doubled[key]).T + b
        assert torch.linalg.norm(ours_out - target) < 1e-4 * torch.linalg.norm(target)
        torch.testing.assert_close(doubled_out - target, b.expand_as(target), rtol=1e-4, atol=1e-4)
