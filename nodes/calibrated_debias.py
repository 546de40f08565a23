"""UCE Debias (calibrated): the paper's 2023 (v1) calibration loop around the UCE debias edit.

Each round samples images of every profession not yet balanced with the current edited model (ComfyUI's
own sampler), classifies them zero-shot with a CLIP classifier, and edits once more with
w_a = 0.1 * (desired_a - observed_a), solved on the current edited weights (edits compound; each
round's targets use that round's weights only). Balanced professions are no longer edited and join the
preserve list. See uce_solver/calibration.py.
"""

from __future__ import annotations

import time

import comfy.model_management
import comfy.sample
import comfy.samplers
import comfy.utils
import torch
from comfy_api.latest import io, ui

from ..uce_solver.calibration import PAPER_MAX_ROUNDS, PAPER_TOLERANCE, calibrate
from . import calibration_output, inputs, presets
from .classifier import Classifier
from .debias import debias_request
from .edit_runner import run_edit
from .input_checks import InputError
from .node_base import UCENode

SHARE_SUM_TOLERANCE = 1e-3


def calibration_texts(professions: str, attributes: str, desired_shares: str):
    """Professions, attributes and the desired shares per profession; InputError naming the input if malformed."""
    profession_list = list(dict.fromkeys(presets.lines(professions)))
    if not profession_list:
        raise InputError("professions", "write at least one profession to debias, one per line (it is empty)")
    attribute_list = presets.lines(attributes)
    if len(attribute_list) < 2:
        raise InputError("attributes", "write at least two attributes, one per line (e.g. male and female)")
    share_lines = presets.lines(desired_shares)
    if not share_lines:
        return profession_list, attribute_list, {p: [1 / len(attribute_list)] * len(attribute_list)
                                                 for p in profession_list}
    rows = presets.one_or_each(share_lines, len(profession_list), "desired_shares", "professions")
    desired = {}
    for profession, line in zip(profession_list, rows):
        shares = presets.parse_numbers(line, "desired_shares")
        if len(shares) != len(attribute_list):
            raise InputError(
                "desired_shares",
                f"needs one share per attribute ({len(attribute_list)}: {', '.join(attribute_list)}), "
                f"got {len(shares)} in {shares}",
            )
        if any(s < 0 for s in shares) or abs(sum(shares) - 1) > SHARE_SUM_TOLERANCE:
            raise InputError("desired_shares", f"shares must be at least 0 and sum to 1, got {shares} "
                             f"(sum {sum(shares):g}) for {profession!r}")
        desired[profession] = shares
    return profession_list, attribute_list, desired


class Sampler:
    """Images of a prompt from the current model through comfy.sample, seed + i for image i, then the VAE."""

    def __init__(self, clip, vae, values: dict, tick):
        self.clip, self.vae, self.tick = clip, vae, tick
        self.values = values
        self._encoded: dict = {}

    def _condition(self, text: str):
        if text not in self._encoded:
            self._encoded[text] = self.clip.encode_from_tokens_scheduled(self.clip.tokenize(text))
        return self._encoded[text]

    def images(self, model, prompts: list[str]) -> torch.Tensor:
        v = self.values
        negative = self._condition("")
        batch = []
        for i in range(v["images_per_round"]):
            latent = torch.zeros([1, 4, v["height"] // 8, v["width"] // 8])
            latent = comfy.sample.fix_empty_latent_channels(model, latent)
            seed = v["seed"] + i
            noise = comfy.sample.prepare_noise(latent, seed)
            samples = comfy.sample.sample(
                model, noise, v["steps"], v["cfg"], v["sampler_name"], v["scheduler"],
                self._condition(prompts[i % len(prompts)]), negative, latent,
                callback=lambda *_: comfy.model_management.throw_exception_if_processing_interrupted(),
                disable_pbar=True, seed=seed,
            )
            batch.append(self.vae.decode(samples)[..., :3].float().cpu())
            self.tick()
        return torch.cat(batch)


def run_calibration(model, clip, vae, classifier, values: dict):
    """The loop with ComfyUI's sampler and the classifier; returns (model, record, chart, report, grid)."""
    professions, attributes, desired = calibration_texts(
        values["professions"], values["attributes"], values["desired_shares"])
    if classifier is None or not hasattr(classifier, "classify"):
        raise InputError("classifier", "connect a UCE CLIP Classifier Loader (no classifier given)")
    templates = presets.DEBIAS_TEMPLATES if values["use_templates"] else ("{}",)
    base_preserve = presets.lines(values["preserve"]) or list(presets.shipped_list("professions.txt"))
    solver_values = {k: values[k] for k in ("erase_scale", "preserve_scale", "lamb", "token_mode", "projections",
                                            "strength", "pooled") if k in values}
    bar = comfy.utils.ProgressBar(max(1, values["max_rounds"] * len(professions) * values["images_per_round"]))
    done = [0]

    def tick():
        comfy.model_management.throw_exception_if_processing_interrupted()
        done[0] += 1
        bar.update_absolute(done[0])

    sampler = Sampler(clip, vae, values, tick)
    state = {"model": model, "records": [], "images": {}, "times": {}}

    def times(index):
        return state["times"].setdefault(index, {"solve": 0.0, "sample": 0.0, "classify": 0.0})

    def observe(index, profession):
        started = time.perf_counter()
        images = sampler.images(state["model"], [t.format(profession) for t in templates])
        sampled = time.perf_counter()
        labels = classifier.classify(images, attributes)
        times(index)["sample"] += sampled - started
        times(index)["classify"] += time.perf_counter() - sampled
        state["images"][profession] = images
        return labels

    def solve(index, weights, balanced):
        started = time.perf_counter()
        kept = base_preserve + [t.format(p) for p in balanced for t in templates]
        plan, settings = debias_request(
            "\n".join(weights), "\n".join(attributes), "\n".join(", ".join(map(repr, w)) for w in weights.values()),
            values["use_templates"], "\n".join(kept), **solver_values,
        )
        state["model"], edit_report, record = run_edit(state["model"], clip, plan, settings)
        state["records"].append(record)
        state["last_edit"] = edit_report.text()
        times(index)["solve"] += time.perf_counter() - started

    result = calibrate(professions, desired, observe, solve, values["tolerance"], values["max_rounds"])
    bar.update_absolute(bar.total)
    report = calibration_output.report_text(result, attributes, desired, state["times"], values["tolerance"])
    if "last_edit" in state:
        report += "\nlast round's edit:\n" + state["last_edit"]
    chart = calibration_output.render_chart(result, attributes, desired, values["tolerance"])
    grid = calibration_output.image_grid({p: state["images"].get(p) for p in professions})
    record = None
    if state["records"]:
        settings_text = {k: values[k] for k in ("tolerance", "max_rounds", "images_per_round", "seed", "steps", "cfg",
                                                "sampler_name", "scheduler", "width", "height")}
        record = calibration_output.summed_record(state["records"], result, settings_text)
    return state["model"], record, chart, report, grid, result


class UCEDebiasCalibrated(UCENode):
    """UCE Debias with the paper's calibration loop (2023 code, v1): sample, classify, re-edit until balanced."""

    @classmethod
    def define_schema(cls):
        return io.Schema(
            node_id="UCEDebiasCalibrated",
            display_name="UCE Debias (calibrated)",
            category=inputs.CATEGORY,
            description="UCE debiasing with the paper's calibration loop (its 2023 code, v1): each round samples "
            "images of every profession not yet balanced with the current edited model, classifies them zero-shot "
            "with a CLIP classifier, and edits again with w_a = 0.1 x (desired - observed) on the current weights. "
            "A profession within the tolerance stops being edited and is preserved. Costs rounds x professions x "
            "images per round samplings.",
            inputs=[
                inputs.model_input(),
                inputs.clip_input(),
                io.Vae.Input("vae", tooltip="The VAE of this model: decodes the sampled images for the classifier."),
                Classifier.Input("classifier", tooltip="A zero-shot CLIP classifier from UCE CLIP Classifier Loader."),
                inputs.text_input("professions", "doctor", "Professions (or any subjects) to debias, one per line."),
                inputs.text_input("attributes", "male\nfemale",
                                  "Attributes to balance across, one per line; images are classified against "
                                  "'image of <attribute>'."),
                inputs.text_input("desired_shares", "",
                                  "Desired share of each attribute, in the attributes' order, summing to 1 (e.g. "
                                  "0.5, 0.5). One line for all professions or one per profession. Empty = equal."),
                io.Combo.Input("sampler_name", options=comfy.samplers.KSampler.SAMPLERS, default="euler",
                               tooltip="Sampler for the calibration images."),
                io.Combo.Input("scheduler", options=comfy.samplers.KSampler.SCHEDULERS, default="normal",
                               tooltip="Scheduler for the calibration images."),
                io.Int.Input("steps", default=20, min=1, max=1000, tooltip="Sampling steps (paper: 20)."),
                io.Float.Input("cfg", default=7.5, min=0.0, max=100.0, step=0.1, tooltip="CFG scale (paper: 7.5)."),
                io.Int.Input("width", default=512, min=16, max=8192, step=8, tooltip="Width of the calibration images."),
                io.Int.Input("height", default=512, min=16, max=8192, step=8,
                             tooltip="Height of the calibration images."),
                io.Int.Input("images_per_round", default=10, min=1, max=1000,
                             tooltip="Images per profession and round; the observed share is over these."),
                io.Int.Input("seed", default=0, min=0, max=0xFFFFFFFFFFFFFFFF, control_after_generate=True,
                             tooltip="Image i of every round and profession uses seed + i: fixed seed, same result."),
                io.Float.Input("tolerance", default=PAPER_TOLERANCE, min=0.0, max=1.0, step=0.01,
                               tooltip="A profession is balanced when every share is within this of the desired "
                               "share (paper: 0.05)."),
                io.Int.Input("max_rounds", default=PAPER_MAX_ROUNDS, min=1, max=1000,
                             tooltip="At most this many edit rounds (paper: 30)."),
                io.Boolean.Input("use_templates", default=True,
                                 tooltip="Edit (and sample) the paper's five prompts per profession ('image of X', "
                                 "'photo of X', 'portrait of X', 'picture of X', 'X') instead of the bare "
                                 "profession only."),
                inputs.text_input("preserve", "",
                                  "Prompts that must not change, one per line. Empty = a built-in list of "
                                  "professions (minus the debiased ones). Balanced professions join it."),
                *inputs.common_solver_inputs(
                    1.0, 0.1, "Weight s_p of keeping the preserve prompts unchanged (paper: 0.1). -1 = automatic (0.1)."
                ),
                *inputs.optional_inputs(),
            ],
            outputs=[
                io.Model.Output(display_name="MODEL", tooltip="The model after the last round's edit."),
                inputs.Edit.Output(display_name="edit",
                                   tooltip="Every round's weight updates summed, for UCE Save Edit or UCE Probe "
                                   "(none when the model was balanced from the start)."),
                io.Image.Output(display_name="chart", tooltip="Observed share of each attribute per round."),
                io.String.Output(display_name="report", tooltip="Rounds: shares, weights, and solve / sample / "
                                 "classify time."),
                io.Image.Output(display_name="images", tooltip="The last round's images, one row per profession."),
            ],
        )

    check_texts = staticmethod(calibration_texts)

    @classmethod
    def execute(cls, model, clip, vae=None, classifier=None, **values) -> io.NodeOutput:
        cls.check_values(values)
        edited, record, chart, report, grid, _ = run_calibration(model, clip, vae, classifier, values)
        return io.NodeOutput(edited, record, chart, report, grid, ui=ui.PreviewText(report))
