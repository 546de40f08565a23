"""Null-space preservation and hardening (uce_solver.robust) against naive float64 forms of their formulas."""

from __future__ import annotations

import pytest
import torch

WIDTH = 24
OUTPUTS = (16, 40, 32)


def make_case(seed: int, concepts: int = 6, preserve: int = 60, dtype=torch.float64):
    g = torch.Generator().manual_seed(seed)
    weights = {f"layer{i}": torch.randn(d_out, WIDTH, generator=g, dtype=dtype) / WIDTH**0.5 for i, d_out in enumerate(OUTPUTS)}
    concept = torch.randn(concepts, WIDTH, generator=g, dtype=dtype)
    guide = torch.randn(concepts, WIDTH, generator=g, dtype=dtype)
    # preserve rows concentrated in a few directions, as text rows are, so that a null space exists
    basis = torch.randn(8, WIDTH, generator=g, dtype=dtype)
    kept = torch.randn(preserve, 8, generator=g, dtype=dtype) @ basis + 1e-3 * torch.randn(preserve, WIDTH, generator=g, dtype=dtype)
    return weights, concept, guide, kept


def edit_rows(solver, concept, guide):
    return solver.EditRows(concept, solver.GuideTargets(guide), tuple(f"c{i}" for i in range(len(concept))), (1,) * len(concept))


def naive_null_space_delta(w0, concept, guide, kept, projector, s_e, s_p, lamb):
    """argmin over ΔW = ΔW P of the UCE objective, by its normal equations with explicit inverses:
    ΔW = s_e R C^T P (P M P + λ (I - P))^-1, R = W0 (G - C)^T, M = λ I + s_e C^T C + s_p K^T K (rows)."""
    eye = torch.eye(WIDTH, dtype=torch.float64)
    m = lamb * eye + s_e * concept.T @ concept + s_p * kept.T @ kept
    residual = w0 @ (guide - concept).T
    return s_e * residual @ concept @ projector @ torch.linalg.inv(projector @ m @ projector + lamb * (eye - projector))


def naive_projector(kept, threshold, invariant, reference=None):
    """The eigenvectors of kept^T kept with the smallest eigenvalues, one by one while their sum stays
    within threshold x the energy of reference (default: kept), minus the span of the invariant rows'
    projections."""
    gram = kept.T @ kept
    budget = threshold * ((kept if reference is None else reference) ** 2).sum()
    values, vectors = torch.linalg.eigh(gram)
    chosen, used = [], 0.0
    for i in range(WIDTH):
        if used + max(float(values[i]), 0.0) > budget:
            break
        used += max(float(values[i]), 0.0)
        chosen.append(vectors[:, i])
    basis = torch.stack(chosen, dim=1)
    p = basis @ basis.T
    q, _ = torch.linalg.qr(p @ invariant.T)
    return p - q @ q.T


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_null_space_update_matches_the_naive_projected_closed_form(solver, seed):
    weights, concept, guide, kept = make_case(seed)
    invariant = kept[:2]  # two preserve rows whose outputs must not move at all
    space = solver.null_space(kept.T @ kept, 0.05, invariant)
    assert torch.allclose(space.projector, naive_projector(kept, 0.05, invariant), atol=1e-9)
    scales = solver.Scales(erase=1.0, preserve=0.5, lamb=0.5)
    for rows in (concept, torch.cat([concept] * 8)):  # low-rank and dense (map) paths
        guides = guide if rows is concept else torch.cat([guide] * 8)
        solution = solver.solve(weights, edit_rows(solver, rows, guides), kept, scales, projector=space.projector)
        for key, w0 in weights.items():
            expected = naive_null_space_delta(w0, rows, guides, kept, space.projector, 1.0, 0.5, 0.5)
            got = solution.deltas[key].dense()
            assert torch.linalg.norm(got - expected) <= 1e-8 * torch.linalg.norm(expected)


def test_null_space_keeps_invariant_rows_exactly_and_preserve_drift_within_the_bound(solver):
    weights, concept, guide, kept = make_case(3)
    invariant = kept[:3]
    space = solver.null_space(kept.T @ kept, 0.01, invariant)
    assert 0 < space.directions < WIDTH
    solution = solver.solve(weights, edit_rows(solver, concept, guide), kept, solver.Scales(), projector=space.projector)
    plain = solver.solve(weights, edit_rows(solver, concept, guide), kept, solver.Scales())
    total = (kept**2).sum()
    for key in weights:
        delta = solution.deltas[key].dense()
        assert torch.linalg.norm(delta @ invariant.T) <= 1e-9 * torch.linalg.norm(delta)
        drift = (delta @ kept.T).square().sum()
        assert drift <= torch.linalg.matrix_norm(delta, 2) ** 2 * space.energy * total * (1 + 1e-9)
        # and the constraint costs something: the plain update moves the preserved rows more
        assert drift < (plain.deltas[key].dense() @ kept.T).square().sum()


def test_null_space_threshold_must_lie_strictly_between_0_and_1(solver):
    gram = torch.eye(4, dtype=torch.float64)
    for threshold in (0.0, 1.0, -0.5, 2.0, float("nan")):
        with pytest.raises(ValueError, match="between 0 and 1"):
            solver.null_space(gram, threshold)


def naive_adversarial(weights, deltas, concept, lamb):
    """c' = (Σ W'ᵀW' + λ I)^-1 Σ W'ᵀ W0 c, row by row, with an explicit inverse."""
    square = sum((w + deltas[k].dense()).T @ (w + deltas[k].dense()) for k, w in weights.items())
    cross = sum((w + deltas[k].dense()).T @ w for k, w in weights.items())
    inverse = torch.linalg.inv(square + lamb * torch.eye(WIDTH, dtype=torch.float64))
    return torch.stack([inverse @ cross @ c for c in concept])


def naive_residual(weights, deltas, concept, adversarial):
    error = sum(((w + deltas[k].dense()) @ adversarial.T - w @ concept.T).square().sum() for k, w in weights.items())
    return float((error / sum((w @ concept.T).square().sum() for w in weights.values())).sqrt())


def test_adversarial_embedding_and_attack_residual_match_the_naive_formulas(solver):
    weights, concept, guide, kept = make_case(4)
    solution = solver.solve(weights, edit_rows(solver, concept, guide), kept, solver.Scales())
    sums = solver.robust.WeightSums(weights, concept.device).edited(solution.deltas)
    for lamb in (1e-3, 0.1):
        got = solver.adversarial_rows(sums, concept, lamb)
        expected = naive_adversarial(weights, solution.deltas, concept, lamb)
        assert torch.allclose(got, expected, rtol=1e-8, atol=1e-10)
        residual = solver.attack_residual(sums, concept, got)
        assert residual == pytest.approx(naive_residual(weights, solution.deltas, concept, got), rel=1e-8)


def test_hardening_rounds_add_the_adversarial_rows_and_raise_the_attack_residual(solver):
    weights, concept, guide, kept = make_case(5, concepts=3)
    edit = edit_rows(solver, concept, guide)
    scales = solver.Scales()
    hardened = solver.harden(weights, edit, kept, scales, solver.Hardening(rounds=2, lamb=1e-3))
    assert len(hardened.residuals) == 3
    assert hardened.solution.edit_rows == 3 * len(concept)
    assert hardened.residuals[-1] > hardened.residuals[0]
    # round 1 by hand: the plain solve, its adversarial rows sent to the same guides, solved again
    plain = solver.solve(weights, edit, kept, scales)
    first = naive_adversarial(weights, plain.deltas, concept, 1e-3)
    by_hand = solver.solve(weights, edit_rows(solver, torch.cat([concept, first]), torch.cat([guide, guide])), kept, scales)
    once = solver.harden(weights, edit, kept, scales, solver.Hardening(rounds=1, lamb=1e-3))
    for key in weights:
        assert torch.allclose(once.solution.deltas[key].dense(), by_hand.deltas[key].dense(), rtol=1e-7, atol=1e-10)
    # zero rounds is the plain solve
    none = solver.harden(weights, edit, kept, scales, solver.Hardening(rounds=0, lamb=1e-3))
    assert len(none.residuals) == 1
    for key in weights:
        assert torch.allclose(none.solution.deltas[key].dense(), plain.deltas[key].dense())


def test_hardening_refuses_bad_settings_and_debias_edits(solver):
    weights, concept, guide, kept = make_case(6)
    edit = edit_rows(solver, concept, guide)
    with pytest.raises(ValueError, match="rounds must be 0 or more"):
        solver.harden(weights, edit, kept, solver.Scales(), solver.Hardening(rounds=-1, lamb=1e-3))
    with pytest.raises(ValueError, match="above 0"):
        solver.harden(weights, edit, kept, solver.Scales(), solver.Hardening(rounds=1, lamb=0.0))
    debias = solver.EditRows(
        concept, solver.DebiasTargets(torch.stack([guide, -guide]), torch.ones(1, 2), torch.zeros(len(concept), dtype=torch.long)),
        ("p",), (len(concept),),
    )
    with pytest.raises(ValueError, match="not to debias"):
        solver.harden(weights, debias, kept, solver.Scales(), solver.Hardening(rounds=1, lamb=1e-3))


def prompts_of(kept, sizes=(1, 2, 3, 4)):
    """The preserve rows cut into prompts of varying row counts."""
    prompts, start, i = [], 0, 0
    while start < len(kept):
        prompts.append(kept[start : start + sizes[i % len(sizes)]])
        start += sizes[i % len(sizes)]
        i += 1
    return prompts


def test_prior_filtering_keeps_the_prompts_the_unconstrained_update_moves_more_than_the_average_row(solver):
    weights, concept, guide, kept = make_case(7)
    prompts = prompts_of(kept)
    scales = solver.Scales(erase=1.0, preserve=0.5, lamb=0.5)
    eye = torch.eye(WIDTH, dtype=torch.float64)
    unconstrained = {k: naive_null_space_delta(w, concept, guide, kept, eye, 1.0, 0.0, 0.5) for k, w in weights.items()}

    def moved(p):  # mean over the prompt's rows of sum_l ||ΔW_l p||^2
        return float(sum((d @ p.T).square().sum() for d in unconstrained.values()) / len(p))

    average = moved(kept)
    chosen = [p for p in prompts if moved(p) > average]
    assert 0 < len(chosen) < len(prompts)
    invariant = kept[:1]
    got = solver.prior.prior_null_space(
        weights, edit_rows(solver, concept, guide), kept.T @ kept, len(kept), iter(prompts),
        solver.PriorOptions(filtering=True), 0.05, scales, invariant,
    )
    assert (got.prompts, got.kept, got.augmented_rows) == (len(prompts), len(chosen), 0)
    expected = naive_projector(torch.cat(chosen), 0.05, invariant, reference=kept)
    assert torch.allclose(got.space.projector, expected, atol=1e-9)
    # fewer prompts define it: the update may use at least as many directions as with all of them
    assert got.space.directions >= solver.null_space(kept.T @ kept, 0.05, invariant).directions
    square = solver.robust.update_gram(solver.solve(weights, edit_rows(solver, concept, guide), None, solver.Scales(
        erase=1.0, preserve=0.0, lamb=0.5)).deltas, WIDTH, kept.device)
    for p in prompts[:5]:
        assert solver.prior.influence(square, p) == pytest.approx(moved(p), rel=1e-9)


def test_prior_augmentation_adds_copies_along_the_weights_weakest_directions(solver):
    weights, concept, guide, kept = make_case(8)
    weight_gram = sum(w.T @ w for w in weights.values())
    directions = solver.prior.weak_directions(weight_gram, 0.05)
    values, vectors = torch.linalg.eigh(weight_gram)
    count = int((values.cumsum(0) <= 0.05 * values.sum()).sum())
    assert directions.shape == (WIDTH, max(1, count))
    assert torch.allclose((directions @ directions.T), vectors[:, : max(1, count)] @ vectors[:, : max(1, count)].T, atol=1e-9)
    rows = kept[:5]
    copies = solver.prior.augmented_rows(rows, directions, 3, 0.1, torch.Generator().manual_seed(0))
    assert copies.shape == (15, WIDTH)
    moves = copies.reshape(3, 5, WIDTH) - rows
    assert torch.allclose(moves.norm(dim=-1), 0.1 * rows.norm(dim=-1).expand(3, 5), rtol=1e-9)
    assert torch.allclose(moves @ directions @ directions.T, moves, atol=1e-12)  # only along the weak directions
    # so the original outputs barely change: less than a random move of the same size changes them
    random_moves = torch.randn(3, 5, WIDTH, generator=torch.Generator().manual_seed(1), dtype=torch.float64)
    random_moves = random_moves / random_moves.norm(dim=-1, keepdim=True) * moves.norm(dim=-1, keepdim=True)
    assert (moves @ weight_gram * moves).sum() < 0.5 * (random_moves @ weight_gram * random_moves).sum()
    # the null space of the augmented set: the naive projector of the rows plus the same copies
    prompts = prompts_of(kept)
    options = solver.PriorOptions(augmentation=2, scale=0.1, seed=4)
    got = solver.prior.prior_null_space(
        weights, edit_rows(solver, concept, guide), kept.T @ kept, len(kept), iter(prompts), options, 0.05,
        solver.Scales(),
    )
    generator = torch.Generator().manual_seed(4)
    augmented = torch.cat([torch.cat([p, solver.prior.augmented_rows(p, directions, 2, 0.1, generator)]) for p in prompts])
    assert got.augmented_rows == 2 * len(kept)
    empty = torch.zeros(0, WIDTH, dtype=torch.float64)
    assert torch.allclose(got.space.projector, naive_projector(augmented, 0.05, empty, reference=kept), atol=1e-9)
    # covering the copies too, the update keeps off at least the directions plain null space keeps off
    plain = solver.null_space(kept.T @ kept, 0.05)
    assert got.space.directions <= plain.directions


def test_prior_options_refuse_bad_values(solver):
    weights, concept, guide, kept = make_case(9)
    for options, message in (
        (solver.PriorOptions(augmentation=-1), "0 to 16 copies"),
        (solver.PriorOptions(augmentation=17), "0 to 16 copies"),
        (solver.PriorOptions(augmentation=1, scale=0.0), "scale must be above 0"),
    ):
        with pytest.raises(ValueError, match=message):
            solver.prior.prior_null_space(
                weights, edit_rows(solver, concept, guide), kept.T @ kept, len(kept), [kept], options, 0.05,
                solver.Scales(),
            )
