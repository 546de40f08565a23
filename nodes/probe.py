"""UCE Probe: how far an edit moved each prompt's text-reading outputs, measured in attention space.

No sampling: for each probe prompt, the rows the model's text-reading weights read (the rows the
solver uses, with the model's own RMSNorm / text MLP applied) are multiplied by the effective
weights of both MODELs (base weights plus every patch on the MODEL, LoRAs included), and the
change is measured:

- movement of a prompt: ||(W_edited - W_original) c|| / ||W_original c||, over every row the weights
  read for the prompt (all of its rows, e.g. 77 per CLIP prompt; also the rows of the `paper` token
  mode's preserve term) and summed over the weights measured (root of the summed squares);
- closeness of an edited concept to its guide: ||W_edited c - W_original g|| / ||W_original c - W_original g||
  over the concept's and guide's rows aligned as the solver aligned them (the edit's token mode):
  1 = unchanged, 0 = its outputs are now the guide's;
- per layer (weight key): the movement of each edited concept.
"""

from __future__ import annotations

import dataclasses
import json
import math
from dataclasses import dataclass
from typing import Optional

import numpy as np
import torch
from comfy_api.latest import io, ui

from .. import uce_solver
from . import inputs, model_weights, presets, text_rows
from .edit_record import EditRecord
from .edit_runner import _check_clip, _solve_device
from .input_checks import InputError, quote

# A few prompts that UCE edits usually keep (in the style of the preserve lists) and a few unrelated ones.
PRESERVED_STYLE = ("painting by Claude Monet", "art by Rembrandt", "a portrait of a woman")
UNRELATED = ("a photo of a dog on the grass", "a red car parked on a street", "a bowl of fruit on a table")
MAX_DEFAULT_PAIRS = 12  # edited concepts (with their guides) the default probe set takes from the edit
MAX_PROBE_PROMPTS = 256
CHART_LABEL_CHARS = 34

KIND_COLORS = {
    "edited": "#d62728",
    "guide": "#1f77b4",
    "attribute": "#1f77b4",
    "unconditional": "#7f7f7f",
    "preserved-style": "#2ca02c",
    "unrelated": "#9467bd",
    "probe": "#ff7f0e",
}


@dataclass(frozen=True)
class ProbePrompt:
    text: str
    kind: str  # edited, guide, attribute, unconditional, preserved-style, unrelated, probe


@dataclass(frozen=True)
class Closeness:
    concept: str
    guide: str
    value: float  # ||W_e c - W_o g|| / ||W_o c - W_o g||
    rows: int


@dataclass(frozen=True)
class ProbeResult:
    family: str
    model_class: str
    group_labels: tuple[str, ...]
    keys: tuple[str, ...]
    token_mode: str
    prompts: tuple[ProbePrompt, ...]
    movement: dict  # text -> movement over all weights
    rows: dict  # text -> rows measured per weight
    closeness: tuple[Closeness, ...]
    mode_movement: dict  # text -> movement over the token mode's rows (empty in the paper mode: all rows)
    mode_rows: dict
    per_layer: dict  # edited concept text -> [movement per key, in ``keys`` order]
    pairs_left_out: int = 0
    method: str = ""  # the edit's method ("UCE erase" …), "" without an edit

    def text(self) -> str:
        """The result as a text table."""
        lines = [
            f"UCE Probe on {self.model_class} ({self.family}): {len(self.keys)} text-reading weights "
            f"({', '.join(self.group_labels)}), measured in attention space with each MODEL's effective weights",
            "",
            "movement = ||(W_edited - W_original) c|| / ||W_original c|| over all rows each weight reads for the "
            "prompt, all weights together (0 = unchanged)",
        ]
        mode = self.token_mode.replace("_", " ")
        if self.mode_movement:
            lines.append(
                f"{mode} movement: the same over the rows the {self.token_mode} token mode preserves ({mode} rows)"
            )
        header = f"  {'movement':>11}  {'rows':>5}  "
        if self.mode_movement:
            header += f"{mode + ' mvt':>14}  {'rows':>4}  "
        lines.append(header + f"{'kind':<16} prompt")
        for prompt in self.prompts:
            line = f"  {self.movement[prompt.text]:>11.6g}  {self.rows[prompt.text]:>5}  "
            if self.mode_movement:
                line += f"{self.mode_movement[prompt.text]:>14.6g}  {self.mode_rows[prompt.text]:>4}  "
            lines.append(line + f"{prompt.kind:<16} {json.dumps(prompt.text, ensure_ascii=False)}")
        if self.closeness:
            lines += [
                "",
                "closeness to the guide = ||W_edited c - W_original g|| / ||W_original c - W_original g|| over the "
                f"concept's and guide's rows aligned as the solver aligned them ({self.token_mode} token mode); "
                "1 = unchanged, 0 = on the guide",
                f"  {'closeness':>11}  {'rows':>5}  concept -> guide",
            ]
            for item in self.closeness:
                lines.append(
                    f"  {item.value:>11.6g}  {item.rows:>5}  {json.dumps(item.concept, ensure_ascii=False)} -> "
                    f"{json.dumps(item.guide, ensure_ascii=False)}"
                )
            if self.pairs_left_out:
                lines.append(f"  ({self.pairs_left_out} more edited prompts not measured)")
        if self.per_layer:
            concepts = list(self.per_layer)
            lines += ["", "movement per layer of the edited concepts (same measure, one weight at a time):"]
            lines += [f"  [{index + 1}] {json.dumps(text, ensure_ascii=False)}" for index, text in enumerate(concepts)]
            lines.append("  " + "  ".join(f"{f'[{i + 1}]':>11}" for i in range(len(concepts))) + "  weight")
            for index, key in enumerate(self.keys):
                values = "  ".join(f"{self.per_layer[text][index]:>11.6g}" for text in concepts)
                lines.append(f"  {values}  {key}")
        return "\n".join(lines)


def default_prompts(record: Optional[EditRecord]) -> list[ProbePrompt]:
    """The built-in probe set: the edit's concepts and guides (or debias prompts and attributes; the first
    MAX_DEFAULT_PAIRS), the unconditional prompt, a few preserved-style and a few unrelated prompts."""
    found: list[ProbePrompt] = []
    edited_texts: list[str] = []
    if record is not None:
        edited = _edited(record)
        if "pairs" in edited:
            pairs = [tuple(p) for p in edited["pairs"]]
            pairs = pairs[:MAX_DEFAULT_PAIRS]
            edited_texts = [c for c, _ in pairs]
            found += [ProbePrompt(c, "edited") for c, _ in pairs]
            found += [ProbePrompt(g, "guide" if g else "unconditional") for _, g in pairs]
        else:
            prompts = list(edited.get("prompts", []))
            edited_texts = prompts[:MAX_DEFAULT_PAIRS]
            found += [ProbePrompt(p, "edited") for p in edited_texts]
            found += [ProbePrompt(a, "attribute") for a in edited.get("attributes", [])]
    found.append(ProbePrompt("", "unconditional"))
    found += [ProbePrompt(p, "preserved-style") for p in presets.without(list(PRESERVED_STYLE), edited_texts)]
    found += [ProbePrompt(p, "unrelated") for p in presets.without(list(UNRELATED), edited_texts)]
    unique: dict[str, ProbePrompt] = {}
    for prompt in found:
        unique.setdefault(prompt.text, prompt)
    return list(unique.values())


def probe(original, edited, clip, prompts: str = "", record: Optional[EditRecord] = None) -> ProbeResult:
    """Measure how far ``edited`` moved the text-reading outputs of ``original`` (see the module docstring)."""
    family = model_weights.family_of(original)
    family_edited = model_weights.family_of(edited)
    if family_edited.name != family.name:
        raise ValueError(
            f"the original MODEL is {family.name} ({model_weights.model_family(original)}) but the edited MODEL is "
            f"{family_edited.name} ({model_weights.model_family(edited)}): connect the MODEL the edit was made on "
            "and its edited copy"
        )
    if record is not None and record.family != family.name:
        raise ValueError(
            f"the edit was made on a {record.family} model ({record.model_class}) but these MODELs are {family.name}: "
            "connect the edit that made the edited MODEL"
        )
    device = _solve_device()
    groups = _groups(original, family, record, device)
    keys = tuple(k for group in groups for k in group.keys)
    _check_shapes(original, edited, keys)
    _check_clip(clip, family, groups, original)

    probes = _probe_prompts(prompts, record)
    edited_meta = _edited(record) if record is not None else {}
    token_mode = (record.description.get("uce.token_mode") if record is not None else None) or "paper"
    uce_solver.check_token_mode(token_mode)
    pairs = [tuple(p) for p in edited_meta.get("pairs", [])][:MAX_DEFAULT_PAIRS]
    per_layer_texts = [c for c, _ in pairs] or list(edited_meta.get("prompts", []))[:MAX_DEFAULT_PAIRS]
    left_out = max(0, len(edited_meta.get("pairs", edited_meta.get("prompts", []))) - MAX_DEFAULT_PAIRS)

    texts = list(dict.fromkeys([p.text for p in probes] + [t for pair in pairs for t in pair] + per_layer_texts))
    text_rows.check_prompts(clip, texts, family)
    encoded = text_rows.encode_prompts(clip, texts, family=family, pooled=any(g.pooled for g in groups))

    # per text and key: ||ΔW c||² and ||W0 c||² summed over the prompt's rows
    moved = {text: {} for text in texts}
    reference = {text: {} for text in texts}
    rows_count: dict = {}
    mode_moved = {text: 0.0 for text in texts}
    mode_reference = {text: 0.0 for text in texts}
    mode_count: dict = {}
    gap_after = {pair: 0.0 for pair in pairs}
    gap_before = {pair: 0.0 for pair in pairs}
    pair_rows: dict = {}
    for group in groups:
        prompts_of = {text: group.rows_of(encoded[text]) for text in texts}
        rows = {text: p.rows.to(device, torch.float64) for text, p in prompts_of.items()}
        # the rows the token mode keeps for a preserved prompt (last_token: each segment's last content token)
        mode_rows = {} if token_mode == "paper" else {
            text: uce_solver.preserve_rows(p, token_mode).to(device, torch.float64) for text, p in prompts_of.items()
        }
        aligned = {}
        for pair in pairs:
            c, g = (group.rows_of(encoded[t]) for t in pair)
            aligned[pair] = [r.to(device, torch.float64) for r in uce_solver.aligned_rows([c, g], token_mode)]
        w_original = group.weights(original, device)
        w_edited = group.weights(edited, device)
        for key in group.keys:
            w0 = w_original[key].to(torch.float64)
            delta = w_edited[key].to(torch.float64) - w0
            for text, r in rows.items():
                moved[text][key] = (r @ delta.T).square().sum()
                reference[text][key] = (r @ w0.T).square().sum()
            for text, r in mode_rows.items():
                mode_moved[text] += (r @ delta.T).square().sum()
                mode_reference[text] += (r @ w0.T).square().sum()
            for pair, (c, g) in aligned.items():
                target = g @ w0.T
                before = c @ w0.T - target
                gap_before[pair] += before.square().sum()
                gap_after[pair] += (before + c @ delta.T).square().sum()
            del w0, delta
        if group is groups[0]:  # rows reported: those of the first group (the conditioning)
            rows_count = {text: r.shape[0] for text, r in rows.items()}
            mode_count = {text: r.shape[0] for text, r in mode_rows.items()}
            pair_rows = {pair: c.shape[0] for pair, (c, _) in aligned.items()}

    moved = {t: {k: float(v) for k, v in by_key.items()} for t, by_key in moved.items()}  # one sync per value,
    reference = {t: {k: float(v) for k, v in by_key.items()} for t, by_key in reference.items()}  # after all ran
    gap_before = {pair: float(v) for pair, v in gap_before.items()}
    gap_after = {pair: float(v) for pair, v in gap_after.items()}

    def ratio(num: float, den: float, empty: float = 0.0) -> float:
        return math.sqrt(num / den) if den > 0 else (empty if num == 0 else math.inf)

    movement = {t: ratio(sum(moved[t].values()), sum(reference[t].values())) for t in texts}
    mode_movement = {} if token_mode == "paper" else {
        t: ratio(float(mode_moved[t]), float(mode_reference[t])) for t in texts
    }
    closeness = tuple(
        Closeness(c, g, ratio(gap_after[(c, g)], gap_before[(c, g)], empty=1.0), pair_rows[(c, g)])
        for c, g in pairs
    )
    per_layer = {t: [ratio(moved[t][k], reference[t][k]) for k in keys] for t in per_layer_texts}
    return ProbeResult(
        family=family.name,
        model_class=model_weights.model_family(original),
        group_labels=tuple(dict.fromkeys(g.label for g in groups)),
        keys=keys,
        token_mode=token_mode,
        prompts=tuple(probes),
        movement=movement,
        mode_movement=mode_movement,
        mode_rows=mode_count,
        rows=rows_count,
        closeness=closeness,
        per_layer=per_layer,
        pairs_left_out=left_out,
        method=record.description.get("uce.method", "UCE edit") if record is not None else "",
    )


def _edited(record: EditRecord) -> dict:
    try:
        return json.loads(record.description.get("uce.edited", "{}"))
    except ValueError:
        return {}


def _probe_prompts(prompts: str, record: Optional[EditRecord]) -> list[ProbePrompt]:
    listed = presets.lines(prompts or "")
    if not listed:
        if record is None:
            raise InputError(
                "prompts",
                "write the prompts to probe, one per line, or connect the edit (a UCE node's edit output) to probe "
                "its concepts, their guides and a few other prompts",
            )
        return default_prompts(record)
    if len(listed) > MAX_PROBE_PROMPTS:
        raise InputError("prompts", f"{len(listed):,} prompts: probe at most {MAX_PROBE_PROMPTS} at a time")
    edited = set()
    guides = set()
    if record is not None:
        meta = _edited(record)
        edited = {c for c, _ in meta.get("pairs", [])} | set(meta.get("prompts", []))
        guides = {g for _, g in meta.get("pairs", [])} | set(meta.get("attributes", []))
    kinds = [("edited" if t in edited else "guide" if t in guides else "probe") for t in listed]
    # the unconditional prompt (always preserved, read at every sampling step) is always probed too
    return [ProbePrompt(t, k) for t, k in dict(zip(listed, kinds)).items()] + [ProbePrompt("", "unconditional")]


def _groups(original, family, record: Optional[EditRecord], device) -> list:
    """The weight groups to measure: every text-reading weight of the family (pooled ones included where it has
    them); with an edit, those it changed."""
    groups = model_weights.text_map_groups(original, family, "keys+values", family.has_pooled, device)
    if record is None:
        return groups
    wanted = set(record.keys)
    all_keys = {k for g in groups for k in g.keys}
    foreign = sorted(wanted - all_keys)
    if foreign:
        raise ValueError(
            f"the edit changes {len(foreign)} weights this {model_weights.model_family(original)} MODEL's text does "
            f"not reach through (e.g. {foreign[0]}): connect the edit that made the edited MODEL"
        )
    kept = []
    for group in groups:
        keys = tuple(k for k in group.keys if k in wanted)
        if keys:
            kept.append(dataclasses.replace(group, keys=keys))
    return kept


def _check_shapes(original, edited, keys) -> None:
    state_original = original.model.state_dict()
    state_edited = edited.model.state_dict()
    for key in keys:
        if key not in state_edited or tuple(state_edited[key].shape) != tuple(state_original[key].shape):
            got = "no such weight" if key not in state_edited else f"shape {tuple(state_edited[key].shape)}"
            raise ValueError(
                f"the edited MODEL does not have the original MODEL's weights: {key} is "
                f"{tuple(state_original[key].shape)} in the original, {got} in the edited one: connect the MODEL "
                "the edit was made on and its edited copy"
            )


def _short(text: str) -> str:
    shown = text if text else "(unconditional)"
    return shown if len(shown) <= CHART_LABEL_CHARS else shown[: CHART_LABEL_CHARS - 1] + "…"


def _layer_label(key: str) -> str:
    name = key.removeprefix("diffusion_model.").removesuffix(".weight")
    for long, short in (("input_blocks.", "in"), ("output_blocks.", "out"), ("middle_block", "mid"),
                        (".transformer_blocks.", ".tb"), ("cross_attn.", "xa."), (".attn2.to_", ".")):
        name = name.replace(long, short)
    return name if len(name) <= 28 else "…" + name[-27:]


def render_chart(result: ProbeResult) -> torch.Tensor:
    """The result as a chart: a ComfyUI IMAGE ([1, H, W, 3] float in 0..1)."""
    from matplotlib.figure import Figure

    prompts = list(result.prompts)
    bar_rows = max(len(prompts), len(result.closeness), 3)
    top = max(4.0, 0.9 + 0.32 * bar_rows)
    bottom = 3.4 if result.per_layer else 0.0
    figure = Figure(figsize=(12, top + bottom + 0.6), dpi=100, layout="constrained")
    grid = figure.add_gridspec(2 if bottom else 1, 2, height_ratios=[top, bottom] if bottom else [1],
                               width_ratios=[3, 2])
    figure.suptitle(f"UCE Probe: {result.model_class} ({result.family}), {len(result.keys)} text-reading weights",
                    fontsize=13)

    ax = figure.add_subplot(grid[0, 0])
    values = [100 * result.movement[p.text] for p in prompts]
    positions = np.arange(len(prompts))
    colors = [KIND_COLORS.get(p.kind, "#333333") for p in prompts]
    mode = result.token_mode.replace("_", " ")
    if result.mode_movement:  # all rows (full bars) and the token mode's rows (hatched bars below them)
        mode_values = [100 * result.mode_movement[p.text] for p in prompts]
        ax.barh(positions - 0.2, values, height=0.4, color=colors)
        ax.barh(positions + 0.2, mode_values, height=0.4, color=colors, alpha=0.45, hatch="//", edgecolor="#333333")
        bars = [(positions - 0.2, values), (positions + 0.2, mode_values)]
        ax.set_xlabel(f"output moved, % of ||W_orig c||: all rows (solid), {mode} rows (hatched)")
    else:
        ax.barh(positions, values, color=colors)
        bars = [(positions, values)]
        ax.set_xlabel("output moved, % of ||W_orig c|| (all rows)")
    ax.set_yticks(positions, [_short(p.text) for p in prompts], fontsize=9)
    ax.invert_yaxis()
    ax.set_title("How far each prompt moved", fontsize=11)
    peak = max([v for _, vs in bars for v in vs] + [1e-9])
    for ys, vs in bars:
        for y, value in zip(ys, vs):
            ax.text(value + peak * 0.01, y, f"{value:.2f}%", va="center", fontsize=8 if len(bars) == 1 else 7)
    ax.set_xlim(0, peak * 1.18)
    kinds = list(dict.fromkeys(p.kind for p in prompts))
    handles = [ax.barh([0], [0], color=KIND_COLORS.get(k, "#333333"), label=k) for k in kinds]
    figure.legend(handles=handles, fontsize=9, loc="outside lower center", ncol=len(kinds), frameon=False)

    ax = figure.add_subplot(grid[0, 1])
    if result.closeness:
        labels = [f"{_short(c.concept)} → {_short(c.guide)}" for c in result.closeness]
        values = [c.value for c in result.closeness]
        positions = np.arange(len(values))
        ax.barh(positions, values, color=KIND_COLORS["edited"])
        ax.set_yticks(positions, labels, fontsize=9)
        ax.invert_yaxis()
        ax.axvline(1.0, color="#555555", linestyle="--", linewidth=1)
        ax.set_xlim(0, max(1.1, max(values) * 1.1))
        for y, value in zip(positions, values):
            ax.text(value + 0.01, y, f"{value:.3f}", va="center", fontsize=8)
        ax.set_xlabel("1 = unchanged, 0 = on the guide")
        ax.set_title(f"Distance left to the guide ({result.token_mode} rows)", fontsize=11)
    else:
        ax.axis("off")
        message = (f"{result.method}: no concept → guide pairs to measure" if result.method else
                   "closeness to the guide:\nconnect the edit of an erase or moderate node")
        ax.text(0.5, 0.5, message, ha="center", va="center", fontsize=10, transform=ax.transAxes)

    if result.per_layer:
        ax = figure.add_subplot(grid[1, :])
        x = np.arange(len(result.keys))
        for text, layer_values in result.per_layer.items():
            ax.plot(x, [100 * v for v in layer_values], marker="o", markersize=3, label=_short(text))
        step = max(1, math.ceil(len(x) / 40))
        ax.set_xticks(x[::step], [_layer_label(k) for k in result.keys][::step], rotation=70, ha="right", fontsize=7)
        ax.set_ylabel("moved, % (all rows)")
        ax.set_ylim(bottom=0)
        ax.set_title("Edited concepts: movement per layer (weight)", fontsize=11)
        ax.grid(alpha=0.3)
        if len(result.per_layer) <= 12:
            ax.legend(fontsize=8, ncol=2)
    return _figure_image(figure)


def _figure_image(figure) -> torch.Tensor:
    from matplotlib.backends.backend_agg import FigureCanvasAgg

    canvas = FigureCanvasAgg(figure)
    canvas.draw()
    pixels = np.asarray(canvas.buffer_rgba())[..., :3].astype(np.float32) / 255.0
    return torch.from_numpy(pixels.copy()).unsqueeze(0)


class UCEProbe(io.ComfyNode):
    """Measure an edit in attention space: how far each prompt moved, how close the erased concepts are to their
    guides, and per layer."""

    @classmethod
    def define_schema(cls):
        return io.Schema(
            node_id="UCEProbe",
            display_name="UCE Probe",
            category=inputs.CATEGORY,
            description="Measures what an edit did, without sampling: for each probe prompt, how far the outputs of "
            "every text-reading weight (cross-attention keys/values, a DiT's text input) moved between the original "
            "and the edited MODEL, and for each erased concept how close its outputs now are to its guide's. Uses "
            "the same text rows and effective weights (LoRAs included) as the solver.",
            inputs=[
                io.Model.Input("original_model", tooltip="The MODEL before the edit (what the UCE node got)."),
                io.Model.Input(
                    "edited_model", tooltip="The MODEL after the edit (the UCE node's MODEL output, or any model of "
                    "the same family and shapes, e.g. after a LoRA)."
                ),
                io.Clip.Input("clip", tooltip="The CLIP loaded with these MODELs (the one the edit was made with)."),
                inputs.text_input(
                    "prompts",
                    "",
                    "Prompts to probe, one per line (the unconditional prompt is always probed too). Empty = the "
                    "edit's concepts and guides, a few preserved-style and a few unrelated prompts.",
                ),
                inputs.Edit.Input(
                    "edit",
                    optional=True,
                    tooltip="The edit (a UCE node's edit output): its concepts, guides and token mode, and the "
                    "weights it changed (only those are measured). Without it every text-reading weight is measured.",
                ),
            ],
            outputs=[
                io.Image.Output(display_name="chart", tooltip="The measurements as a chart."),
                io.String.Output(display_name="table", tooltip="The measurements as a text table."),
            ],
        )

    @classmethod
    def execute(cls, original_model, edited_model, clip, prompts="", edit=None) -> io.NodeOutput:
        result = probe(original_model, edited_model, clip, prompts, edit)
        table = result.text()
        return io.NodeOutput(render_chart(result), table, ui=ui.PreviewText(table))
