"""The text-reading weights of a ComfyUI MODEL: find them (family table), read them as patched, patch a clone."""

from __future__ import annotations

import hashlib
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from typing import Optional, Union

import torch

import comfy.lora
import comfy.utils
import comfy.weight_adapter

from ..uce_solver import Delta, DenseDelta, EncodedPrompt, LowRankDelta, Segment
from . import families
from .families import COND, GELU_TANH, POOLED, SILU, Family, RowPart, TextMLP, TextMap

PROJECTIONS = {
    "keys+values": ("k", "v"),
    "values": ("v",),
    "keys": ("k",),
}
POOLED_CHOICES = ("auto", "on", "off")


def model_family(model) -> str:
    """Name of the model's ComfyUI config class (SD15, SD21, SDXL, Flux …)."""
    return families.model_family_name(model)


def family_of(model) -> Family:
    """The family-table entry of a MODEL; raises ValueError naming the model's class if there is none."""
    return families.family_of_model(model, model.model.state_dict().keys())


@dataclass(frozen=True)
class RowNorm:
    """An RMSNorm the model applies to the text rows before a map: x / rms(x) * weight (weight as patched)."""

    weight: torch.Tensor
    eps: float

    def __call__(self, rows: torch.Tensor) -> torch.Tensor:
        rows32 = rows.to(torch.float32)
        scale = torch.rsqrt(rows32.square().mean(dim=-1, keepdim=True) + self.eps)
        return rows32 * scale * self.weight.to(rows.device, torch.float32)

    def digest(self) -> str:
        return _digest([self.weight], repr(self.eps))


_ACTIVATIONS = {
    GELU_TANH: lambda x: torch.nn.functional.gelu(x, approximate="tanh"),
    SILU: torch.nn.functional.silu,
}


@dataclass(frozen=True)
class RowMLP:
    """The model's text MLP on the rows: Linear, activation, Linear … (weights as patched, float32)."""

    weights: tuple[torch.Tensor, ...]
    biases: tuple[Optional[torch.Tensor], ...]
    activation: str

    def __call__(self, rows: torch.Tensor) -> torch.Tensor:
        device = self.weights[0].device
        out = rows.to(device, torch.float32)
        for index, (weight, bias) in enumerate(zip(self.weights, self.biases)):
            if index:
                out = _ACTIVATIONS[self.activation](out)
            out = torch.nn.functional.linear(out, weight, bias)
        return out.to(rows.device)

    @property
    def in_features(self) -> int:
        return self.weights[0].shape[1]

    def digest(self) -> str:
        return _digest([t for t in self.weights + self.biases if t is not None], self.activation)


RowStep = Union[RowNorm, RowMLP]


@dataclass(frozen=True)
class RowPadding:
    """What the model puts in place of an encoder's padding: the rows after the end token become rows
    ``offset + i`` of one of its parameters (as patched)."""

    rows: torch.Tensor
    offset: int

    def __call__(self, prompt: EncodedPrompt) -> EncodedPrompt:
        (segment,) = prompt.segments
        first = segment.start + segment.last + 2  # the row after the end token
        rows = prompt.rows.clone()
        rows[first:] = self.rows[self.offset + first : self.offset + rows.shape[0]].to(rows)
        return prompt.with_rows(rows)

    def digest(self) -> str:
        return _digest([self.rows], repr(self.offset))


@dataclass(frozen=True)
class PartRows:
    """One encoder output as a map reads it: the output (and its layer), then what the model applies to it."""

    source: str
    encoder_width: int  # the width the CLIP must give
    layer: Optional[int] = None
    steps: tuple[RowStep, ...] = ()
    padding: Optional[RowPadding] = None

    def rows_of(self, encoded) -> EncodedPrompt:
        if self.source == POOLED:
            if encoded.pooled is None:
                raise ValueError(f"prompt {encoded.text!r} was encoded without its pooled vector")
            return EncodedPrompt(encoded.text, encoded.pooled.reshape(1, -1), 0)
        prompt = encoded.prompt if self.source == COND else encoded.extra_prompt(self.source, self.layer)
        for step in self.steps:
            prompt = prompt.with_rows(step(prompt.rows))
        return prompt if self.padding is None else self.padding(prompt)

    def digest(self) -> str:
        digests = [step.digest() for step in self.steps] + ([self.padding.digest()] if self.padding else [])
        return _digest([], "|".join([self.source, str(self.layer), *digests]))


def _digest(tensors, extra: str) -> str:
    """A short fingerprint of tensors' values (for cache keys)."""
    h = hashlib.sha256(extra.encode())
    for tensor in tensors:
        h.update(tensor.detach().to("cpu", torch.float32).contiguous().numpy().tobytes())
    return h.hexdigest()[:16]


@dataclass(frozen=True)
class MapGroup:
    """The weights of one family-table map on one MODEL: they read the same rows and are solved together."""

    text_map: TextMap
    keys: tuple[str, ...]
    width: int  # the width of the text rows they read
    in_features: int  # the weights' full input width (wider than ``width`` when the text has some columns)
    parts: tuple[PartRows, ...]  # the encoder outputs they read (joined in order when there are several)
    out_rows: Optional[tuple[int, int]] = None  # the output slice edited (part of fused weights), None: all
    out_features: int = 0  # the weights' full output size
    layer: Optional[int] = None  # the layer of the map's source these weights read (HiDream's Llama layers)

    @property
    def label(self) -> str:
        return self.text_map.label if self.layer is None else f"{self.text_map.label} layer {self.layer}"

    @property
    def pooled(self) -> bool:
        return self.text_map.source == POOLED

    def encoder_widths(self) -> list[tuple[str, int]]:
        """(source, width) of each encoder output this group needs from the CLIP."""
        return [(part.source, part.encoder_width) for part in self.parts]

    def view_key(self) -> tuple:
        """What, besides the text and the CLIP, determines this group's rows (for caches)."""
        return tuple(part.digest() for part in self.parts)

    def weights(self, model, device) -> "EffectiveWeights":
        """The group's weights as patched, restricted to the text columns and the edited output slice."""
        return EffectiveWeights(model, self.keys, device, self.text_map.columns, self.out_rows)

    def full_size(self, deltas: Mapping[str, Delta]) -> Mapping[str, Delta]:
        """The solved deltas as patches of the whole weights (zero outside the text columns and edited slice)."""
        if self.text_map.columns is None and self.out_rows is None:
            return deltas
        columns = self.text_map.columns or (0, self.in_features)
        rows = self.out_rows or (0, self.out_features)
        return pad_deltas(deltas, rows, self.out_features, columns, self.in_features)

    def rows_of(self, encoded) -> EncodedPrompt:
        """The rows these weights read for one encoded prompt (text_rows.EncodedText)."""
        prompts = [part.rows_of(encoded) for part in self.parts]
        return prompts[0] if len(prompts) == 1 else _joined(prompts)


def text_map_groups(
    model, family: Family, projections: str = "keys+values", pooled: bool = False, device="cpu"
) -> list[MapGroup]:
    """The groups of weights to edit, in model order: every family map present in the MODEL.

    ``projections`` picks keys and/or values of K/V maps (other maps are always
    edited); pooled maps only with ``pooled``. The model's own row transforms
    (RMSNorm, text MLP) are read as patched and run on ``device``. Raises
    ValueError if nothing is left.
    """
    if projections not in PROJECTIONS:
        raise ValueError(f"unknown projections {projections!r}; expected one of {', '.join(PROJECTIONS)}")
    wanted = PROJECTIONS[projections]
    state = model.model.state_dict()
    groups = []
    claimed: set[str] = set()
    for text_map in family.maps:
        by_layer = _claim(model, text_map, state, claimed)
        if text_map.source == POOLED and not pooled:
            continue
        for layer, found in by_layer.items():
            keys = [key for key, kind in found if kind is None or kind in wanted]
            if not keys:
                continue
            widths = {_text_width(state[k].shape, text_map) for k in keys}
            if len(widths) != 1:
                raise ValueError(f"{text_map.label} weights of mixed input widths {sorted(widths)} are not supported")
            out_features, in_features = state[keys[0]].shape
            out_rows = _fused_slice(text_map, out_features, wanted)
            width = widths.pop()
            parts = tuple(_part_rows(model, part, device, width) for part in text_map.parts)
            parts = parts or (_map_rows(model, text_map, layer, device, width),)
            groups.append(MapGroup(text_map, tuple(keys), width, in_features, parts, out_rows, out_features, layer))
    if not groups:
        raise ValueError(
            f"this MODEL ({model_family(model)}) has none of the {family.name} text-reading weights "
            f"({', '.join(m.label for m in family.maps)})"
        )
    return groups


def _claim(model, text_map: TextMap, state, claimed: set) -> dict:
    """The keys of ``text_map`` not claimed by an earlier map, by source layer: {layer: [(key, "k"/"v"/None)]}."""
    layers = None if text_map.layers is None else list(getattr(model.model.diffusion_model, text_map.layers))
    by_layer: dict = {}
    for key in state:
        found = None if key in claimed else text_map.matches(key)
        if not found:
            continue
        layer = None
        if layers is not None:
            block = int(found.group("block"))
            if block >= len(layers):
                continue
            layer = int(layers[block])
        claimed.add(key)
        by_layer.setdefault(layer, []).append((key, found.groupdict().get("kv")))
    return dict(sorted(by_layer.items(), key=lambda item: -1 if item[0] is None else item[0]))


def _fused_slice(text_map: TextMap, out_features: int, wanted) -> Optional[tuple[int, int]]:
    """The output slice of a fused weight holding the wanted parts (None: the whole weight)."""
    parts = [part for part in text_map.fused if part in wanted]
    if not text_map.fused or len(parts) == len(text_map.fused):
        return None
    size = out_features // len(text_map.fused)
    (part,) = parts  # fused maps hold K and V: one of them
    start = text_map.fused.index(part) * size
    return (start, start + size)


def _text_width(shape, text_map: TextMap) -> int:
    if len(shape) != 2:
        raise ValueError(f"{text_map.label}: expected a [d_out, d] weight, got shape {tuple(shape)}")
    if text_map.columns is None:
        return shape[1]
    start, stop = text_map.columns
    if stop > shape[1]:
        raise ValueError(f"{text_map.label}: text columns {start}:{stop} exceed the weight's {shape[1]} inputs")
    return stop - start


def _map_rows(model, text_map: TextMap, layer: Optional[int], device, width: int) -> PartRows:
    """The rows of a map that reads one encoder output: its RMSNorm or text MLP applied, where it has one."""
    steps: list[RowStep] = []
    if text_map.norm is not None:
        key = f"{text_map.norm}.weight"
        weight = EffectiveWeights(model, [key], "cpu")[key]
        module = model.model.get_submodule(text_map.norm)
        steps.append(RowNorm(weight, float(getattr(module, "eps", None) or 1e-6)))
    if text_map.mlp is not None:
        steps.append(_row_mlp(model, text_map.mlp, device))
    encoder_width = steps[-1].in_features if text_map.mlp is not None else width
    return PartRows(text_map.source, encoder_width, layer, tuple(steps))


def _row_mlp(model, mlp: TextMLP, device) -> RowMLP:
    state = model.model.state_dict()
    weight_keys = [f"{name}.weight" for name in mlp.linears]
    bias_keys = [f"{name}.bias" for name in mlp.linears]
    effective = EffectiveWeights(model, weight_keys + [k for k in bias_keys if k in state], device)
    return RowMLP(
        tuple(effective[k] for k in weight_keys),
        tuple(effective[k] if k in state else None for k in bias_keys),
        mlp.activation,
    )


def _part_rows(model, part: RowPart, device, width: int) -> PartRows:
    """One part of a map that reads several encoder outputs joined; ``width``: what the map reads."""
    steps = () if part.mlp is None else (_row_mlp(model, part.mlp, device),)
    padding = None
    if part.padding is not None:
        key, offset = part.padding
        padding = RowPadding(EffectiveWeights(model, [key], "cpu")[key], offset)
    return PartRows(part.source, steps[0].in_features if steps else width, None, steps, padding)


def _joined(prompts: list[EncodedPrompt]) -> EncodedPrompt:
    """Prompts of single-segment parts as one prompt whose segments follow each other."""
    rows, segments, start = [], [], 0
    for prompt in prompts:
        for segment in prompt.segments:
            segments.append(Segment(start + segment.start, start + segment.stop, segment.last))
        rows.append(prompt.rows.to(torch.float32))
        start += prompt.rows.shape[0]
    return EncodedPrompt(prompts[0].text, torch.cat(rows), segments=segments)


def patch_dtype(model, keys) -> torch.dtype:
    """Storage dtype for the edit's patches: the weights' own 16-bit dtype, else float32.

    The patched weight is rounded to the weight's dtype anyway, so 16-bit
    factors cost no meaningful precision and halve the patch memory.
    """
    state = model.model.state_dict()
    dtypes = {state[k].dtype for k in keys}
    if len(dtypes) == 1 and dtypes <= {torch.float16, torch.bfloat16}:
        return dtypes.pop()
    return torch.float32


class EffectiveWeights(Mapping):
    """The weights as the sampler will see them: base weight plus every patch already on the MODEL.

    LoRAs and other patches added upstream are included, exactly as ComfyUI
    applies them. Each weight is computed in float32 on ``device`` when it is
    read and not kept, so at most the layers being solved are materialised; the
    shared module's tensors are only read (copied first). ``columns`` restricts
    each weight to the input columns the text occupies, ``rows`` to a slice of
    its outputs (one part of a fused weight).
    """

    def __init__(
        self, model, keys, device, columns: Optional[tuple[int, int]] = None, rows: Optional[tuple[int, int]] = None
    ):
        self._key_patches = model.get_key_patches("diffusion_model.")  # references, no copies
        self._device = device
        self._columns = columns
        self._rows = rows
        self.shapes = {}
        for key in keys:
            shape = tuple(self._key_patches[key][0][0].shape)
            if len(shape) == 2:
                shape = (
                    shape[0] if rows is None else rows[1] - rows[0],
                    shape[1] if columns is None else columns[1] - columns[0],
                )
            self.shapes[key] = shape

    def __getitem__(self, key: str) -> torch.Tensor:
        (base, convert), *patches = self._key_patches[key]
        weight = convert(base.detach().to(self._device, torch.float32, copy=True), inplace=True)
        if patches:
            weight = comfy.lora.calculate_weight(patches, weight, key)
        if self._rows is not None:
            weight = weight[self._rows[0] : self._rows[1]]
        if self._columns is not None:
            weight = weight[:, self._columns[0] : self._columns[1]]
        return weight

    def __iter__(self) -> Iterator[str]:
        return iter(self.shapes)

    def __len__(self) -> int:
        return len(self.shapes)


def pad_deltas(
    deltas: Mapping[str, Delta], rows: tuple[int, int], out_features: int, columns: tuple[int, int], in_features: int
) -> dict[str, Delta]:
    """Deltas of the ``rows`` x ``columns`` block of weights, padded with zeros to [out_features, in_features]."""
    padded: dict[tuple, torch.Tensor] = {}  # a shared factor stays shared

    def pad(t: torch.Tensor, span: tuple[int, int], size: int, dim: int) -> torch.Tensor:
        if span == (0, size):
            return t
        if (id(t), dim) not in padded:
            shape = list(t.shape)
            shape[dim] = size
            out = t.new_zeros(shape)
            out.narrow(dim, span[0], span[1] - span[0]).copy_(t)
            padded[(id(t), dim)] = out
        return padded[(id(t), dim)]

    result: dict[str, Delta] = {}
    for key, d in deltas.items():
        if isinstance(d, LowRankDelta):
            result[key] = LowRankDelta(pad(d.up, rows, out_features, 0), pad(d.down, columns, in_features, 1))
        else:
            result[key] = DenseDelta(pad(pad(d.delta, rows, out_features, 0), columns, in_features, 1))
    return result


def base_weights(model, keys) -> dict[str, torch.Tensor]:
    """The MODEL's own weights for ``keys``, before any patch (also while ComfyUI has patches applied in place)."""
    backup = getattr(model, "backup", {})
    return {key: backup[key].weight if key in backup else comfy.utils.get_attr(model.model, key) for key in keys}


def patched_clone(model, deltas: Mapping[str, Delta], strength: float):
    """A clone of ``model`` with W + strength * ΔW on every key; the input MODEL is left untouched."""
    patches = {}
    for key, delta in deltas.items():
        if isinstance(delta, LowRankDelta):
            patches[key] = comfy.weight_adapter.LoRAAdapter(set(), (delta.up, delta.down, None, None, None, None))
        else:
            patches[key] = ("diff", (delta.delta,))
    edited = model.clone()
    accepted = set(edited.add_patches(patches, strength_patch=strength))
    missing = sorted(set(patches) - accepted)
    if missing:
        raise RuntimeError(f"ComfyUI refused the UCE patch for {len(missing)} weights, e.g. {missing[0]}")
    return edited
