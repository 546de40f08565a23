"""UCE Debias (calibrated) inside a real ComfyUI (CPU): the update and stop rules against a naive reference,
the loop's mechanics with scripted classifier answers, and the real node end to end with a tiny random CLIP
classifier (written as safetensors at test time) on the tiny SD1.5 checkpoint."""

from __future__ import annotations

import importlib
import json

import pytest
import torch
from test_nodes import node_defaults
from uce_devtools import tiny_classifier
from uce_devtools.graph import run_node

FAST = {"width": 64, "height": 64, "steps": 1, "images_per_round": 1, "preserve": "a photo of a dog\nlawyer",
        "use_templates": False, "max_rounds": 2, "tolerance": 0.05}


@pytest.fixture(scope="module")
def calibration(solver):
    return importlib.import_module(f"{solver.__name__}.calibration")


@pytest.fixture(scope="module")
def classifier_name(comfy, tmp_path_factory):
    import folder_paths

    models = tmp_path_factory.mktemp("models")
    tiny_classifier.tiny_classifier(models)
    folder_paths.add_model_folder_path("uce_classifiers", str(models / "uce_classifiers"))
    return tiny_classifier.NAME


@pytest.fixture(scope="module")
def classifier(pack, classifier_name):
    return run_node("UCEClassifierLoader", classifier_name=classifier_name)[0]


def values(pack, **changes):
    return {**node_defaults(pack, "UCEDebiasCalibrated"), **FAST, **changes}


# -- pure rules -------------------------------------------------------------------------------------
def test_update_rule_matches_naive_reference(calibration):
    generator = torch.Generator().manual_seed(0)
    for _ in range(50):
        n = int(torch.randint(2, 6, (1,), generator=generator))
        shares = torch.rand(n, generator=generator, dtype=torch.float64)
        desired = torch.rand(n, generator=generator, dtype=torch.float64)
        shares, desired = (shares / shares.sum()).tolist(), (desired / desired.sum()).tolist()
        naive = [0.1 * (desired[a] - shares[a]) for a in range(n)]
        assert calibration.next_weights(shares, desired) == pytest.approx(naive, abs=1e-15)
        gap = max(abs(shares[a] - desired[a]) for a in range(n))
        assert calibration.balanced(shares, desired, gap + 1e-12)
        assert not calibration.balanced(shares, desired, gap - 1e-12)
    assert calibration.next_weights([0.8, 0.2], [0.5, 0.5]) == pytest.approx([-0.03, 0.03])
    assert calibration.observed_shares([0, 0, 1, 0], 2) == [0.75, 0.25]


def test_loop_stops_when_balanced_and_preserves_balanced(calibration):
    answers = {"a": [[0, 0], [0, 1]], "b": [[0, 0], [0, 0], [1, 0]]}
    solves = []
    result = calibration.calibrate(
        ["a", "b"], {"a": [0.5, 0.5], "b": [0.5, 0.5]},
        lambda index, p: answers[p].pop(0),
        lambda index, weights, kept: solves.append((index, dict(weights), list(kept))),
        tolerance=0.05, max_rounds=30,
    )
    assert result.converged and len(result.rounds) == 3
    assert solves == [
        (0, {"a": pytest.approx([-0.05, 0.05]), "b": pytest.approx([-0.05, 0.05])}, []),
        (1, {"b": pytest.approx([-0.05, 0.05])}, ["a"]),
    ]
    assert result.rounds[2].shares == {"b": [0.5, 0.5]} and result.rounds[2].weights == {}


def test_loop_stops_after_max_rounds_without_accumulating(calibration):
    weights = []
    result = calibration.calibrate(["a"], {"a": [0.5, 0.5]}, lambda i, p: [0, 0, 0, 1],
                                   lambda i, w, kept: weights.append(w["a"]), tolerance=0.05, max_rounds=4)
    assert not result.converged and len(result.rounds) == 4
    assert weights == [pytest.approx([-0.025, 0.025])] * 4  # each round's own weights, never summed


# -- the node -------------------------------------------------------------------------------------
def test_bad_inputs_name_the_input(pack, sd15, classifier):
    model, clip, vae = sd15
    cases = [
        ({"desired_shares": "0.6, 0.6"}, "desired_shares"),
        ({"desired_shares": "0.2, 0.3, 0.5"}, "desired_shares"),
        ({"professions": "  \n"}, "professions"),
        ({"images_per_round": 0}, "images_per_round"),
        ({"attributes": "male"}, "attributes"),
    ]
    node = pack.nodes.NODE_CLASSES["UCEDebiasCalibrated"]
    for change, name in cases:
        with pytest.raises(ValueError, match=f"^{name}:"):
            run_node("UCEDebiasCalibrated", model=model, clip=clip, vae=vae, classifier=classifier,
                     **values(pack, **change))
        message = node.validate_inputs(**values(pack, **change))
        assert isinstance(message, str) and message.startswith(f"{name}:")
    with pytest.raises(ValueError, match="^classifier:"):
        run_node("UCEDebiasCalibrated", model=model, clip=clip, vae=vae, classifier=None, **values(pack))


def test_node_end_to_end_with_tiny_classifier(pack, sd15, classifier):
    model, clip, vae = sd15
    outputs = run_node("UCEDebiasCalibrated", model=model, clip=clip, vae=vae, classifier=classifier,
                       **values(pack, professions="doctor", tolerance=0.0))
    edited, record, chart, report, grid = outputs
    assert "2 rounds, stopped at max_rounds" in report and "solve s | sample s | classify s" in report
    assert "last round's edit:\nUCE debias on SD15" in report and "effect at strength" in report
    assert chart.ndim == 4 and chart.shape[0] == 1 and chart.shape[3] == 3
    assert tuple(grid.shape) == (1, 64, 64, 3)
    assert record.description["uce.method"] == "UCE debias (calibrated)"
    assert record.deltas and all(len(edited.patches[key]) == 2 for key in record.deltas)  # edits compound
    assert len(json.loads(record.description["uce.calibration"])["rounds"]) == 2


def test_summed_edit_is_the_sum_of_the_rounds(pack, solver):
    output = pack.nodes.calibration_output
    low_rank, dense = pack.uce_solver.LowRankDelta, pack.uce_solver.DenseDelta
    down = torch.randn(2, 6, dtype=torch.float64)
    first = {"k": low_rank(torch.randn(5, 2, dtype=torch.float64), down), "d": dense(torch.randn(5, 6).double())}
    second = {"k": low_rank(torch.randn(5, 1, dtype=torch.float64), torch.randn(1, 6, dtype=torch.float64)),
              "d": low_rank(torch.randn(5, 1).double(), torch.randn(1, 6).double())}
    records = [pack.nodes.edit_record.EditRecord(r, 1.0, "SD1.x", "SD15") for r in (first, second)]
    total = output.sum_deltas(records)
    for key in ("k", "d"):
        assert torch.allclose(total[key].dense(), first[key].dense() + second[key].dense())
    assert isinstance(total["k"], low_rank) and total["k"].up.shape == (5, 3)


def test_same_seed_same_shares_and_weights(pack, sd15, classifier):
    model, clip, vae = sd15
    run = pack.nodes.calibrated_debias.run_calibration
    with torch.inference_mode():  # as ComfyUI runs nodes
        first = run(model, clip, vae, classifier, values(pack, tolerance=0.0, images_per_round=2))[-1]
        second = run(model, clip, vae, classifier, values(pack, tolerance=0.0, images_per_round=2))[-1]
    assert [(r.shares, r.weights) for r in first.rounds] == [(r.shares, r.weights) for r in second.rounds]


def test_balanced_profession_is_preserved_afterwards(pack, sd15, monkeypatch):
    model, clip, vae = sd15
    module = pack.nodes.calibrated_debias
    seen = []
    real_run_edit = module.run_edit

    def spy(model, clip, plan, settings):
        seen.append(([p for p, _ in plan.items], list(settings.preserve), plan.weights))
        return real_run_edit(model, clip, plan, settings)

    monkeypatch.setattr(module, "run_edit", spy)
    script = {"nurse": [[0, 1]], "doctor": [[0, 0], [0, 0], [0, 1]]}
    fake = ScriptedByOrder(["nurse", "doctor", "doctor", "doctor"], script)
    with torch.inference_mode():
        _, _, _, report, _, result = module.run_calibration(
            model, clip, vae, fake, values(pack, professions="nurse\ndoctor", images_per_round=2, max_rounds=5))
    assert result.converged and len(result.rounds) == 3
    assert [edited for edited, _, _ in seen] == [["doctor"], ["doctor"]]
    assert all("nurse" in preserve for _, preserve, _ in seen)
    assert seen[0][2] == [pytest.approx([-0.05, 0.05])]
    assert "balanced" in report


class ScriptedByOrder:
    """Answers in call order: the loop measures professions in input order, round by round."""

    def __init__(self, order, script):
        self.order, self.script = list(order), {p: list(a) for p, a in script.items()}

    def classify(self, images, attributes):
        return self.script[self.order.pop(0)].pop(0)


def test_interrupt_stops_the_loop(pack, sd15, classifier):
    import comfy.model_management

    model, clip, vae = sd15
    comfy.model_management.interrupt_current_processing(True)
    try:
        with pytest.raises(comfy.model_management.InterruptProcessingException):
            run_node("UCEDebiasCalibrated", model=model, clip=clip, vae=vae, classifier=classifier, **values(pack))
    finally:
        comfy.model_management.interrupt_current_processing(False)
