"""The text-reading weights of a ComfyUI MODEL: find them (family table), read them as patched, patch a clone."""

from __future__ import annotations

import hashlib
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from typing import Optional

import torch

import comfy.lora
import comfy.weight_adapter

from ..uce_solver import Delta, DenseDelta, EncodedPrompt, LowRankDelta
from . import families
from .families import POOLED, Family, TextMap

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
        data = self.weight.detach().to("cpu", torch.float32).contiguous().numpy().tobytes()
        return hashlib.sha256(data + repr(self.eps).encode()).hexdigest()[:16]


@dataclass(frozen=True)
class MapGroup:
    """The weights of one family-table map on one MODEL: they read the same rows and are solved together."""

    text_map: TextMap
    keys: tuple[str, ...]
    width: int  # the width of the text rows they read
    in_features: int  # the weights' full input width (wider than ``width`` when the text has some columns)
    norm: Optional[RowNorm] = None

    @property
    def label(self) -> str:
        return self.text_map.label

    @property
    def pooled(self) -> bool:
        return self.text_map.source == POOLED

    def view_key(self) -> tuple:
        """What, besides the text and the CLIP, determines this group's rows (for caches)."""
        return (self.text_map.source, None if self.norm is None else self.norm.digest())

    def full_width(self, deltas: Mapping[str, Delta]) -> Mapping[str, Delta]:
        """The solved deltas as patches of the whole weights (zero outside the text's columns)."""
        if self.text_map.columns is None:
            return deltas
        return pad_columns(deltas, self.text_map.columns, self.in_features)

    def rows_of(self, encoded) -> EncodedPrompt:
        """The rows these weights read for one encoded prompt (text_rows.EncodedText)."""
        if self.pooled:
            if encoded.pooled is None:
                raise ValueError(f"prompt {encoded.text!r} was encoded without its pooled vector")
            return EncodedPrompt(encoded.text, encoded.pooled.reshape(1, -1), 0)
        prompt = encoded.prompt
        return prompt if self.norm is None else prompt.with_rows(self.norm(prompt.rows))


def text_map_groups(model, family: Family, projections: str = "keys+values", pooled: bool = False) -> list[MapGroup]:
    """The groups of weights to edit, in model order: every family map present in the MODEL.

    ``projections`` picks keys and/or values of K/V maps (other maps are always
    edited); pooled maps only with ``pooled``. Raises ValueError if nothing is left.
    """
    if projections not in PROJECTIONS:
        raise ValueError(f"unknown projections {projections!r}; expected one of {', '.join(PROJECTIONS)}")
    state = model.model.state_dict()
    groups = []
    for text_map in family.maps:
        if text_map.source == POOLED and not pooled:
            continue
        keys = []
        for key in state.keys():
            found = text_map.matches(key)
            kind = found.groupdict().get("kv") if found else None
            if found and (kind is None or kind in PROJECTIONS[projections]):
                keys.append(key)
        if not keys:
            continue
        widths = {_text_width(state[k].shape, text_map) for k in keys}
        if len(widths) != 1:
            raise ValueError(f"{text_map.label} weights of mixed input widths {sorted(widths)} are not supported")
        in_features = state[keys[0]].shape[1]
        groups.append(MapGroup(text_map, tuple(keys), widths.pop(), in_features, _row_norm(model, text_map)))
    if not groups:
        raise ValueError(
            f"this MODEL ({model_family(model)}) has none of the {family.name} text-reading weights "
            f"({', '.join(m.label for m in family.maps)})"
        )
    return groups


def _text_width(shape, text_map: TextMap) -> int:
    if len(shape) != 2:
        raise ValueError(f"{text_map.label}: expected a [d_out, d] weight, got shape {tuple(shape)}")
    if text_map.columns is None:
        return shape[1]
    start, stop = text_map.columns
    if stop > shape[1]:
        raise ValueError(f"{text_map.label}: text columns {start}:{stop} exceed the weight's {shape[1]} inputs")
    return stop - start


def _row_norm(model, text_map: TextMap) -> Optional[RowNorm]:
    if text_map.norm is None:
        return None
    key = f"{text_map.norm}.weight"
    weight = EffectiveWeights(model, [key], "cpu")[key]
    module = model.model.get_submodule(text_map.norm)
    return RowNorm(weight, float(getattr(module, "eps", None) or 1e-6))


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
    each weight to the input columns the text occupies.
    """

    def __init__(self, model, keys, device, columns: Optional[tuple[int, int]] = None):
        self._key_patches = model.get_key_patches("diffusion_model.")  # references, no copies
        self._device = device
        self._columns = columns
        self.shapes = {}
        for key in keys:
            shape = tuple(self._key_patches[key][0][0].shape)
            self.shapes[key] = shape if columns is None else (shape[0], columns[1] - columns[0])

    def __getitem__(self, key: str) -> torch.Tensor:
        (base, convert), *patches = self._key_patches[key]
        weight = convert(base.detach().to(self._device, torch.float32, copy=True), inplace=True)
        if patches:
            weight = comfy.lora.calculate_weight(patches, weight, key)
        if self._columns is not None:
            weight = weight[:, self._columns[0] : self._columns[1]]
        return weight

    def __iter__(self) -> Iterator[str]:
        return iter(self.shapes)

    def __len__(self) -> int:
        return len(self.shapes)


def pad_columns(deltas: Mapping[str, Delta], columns: tuple[int, int], in_features: int) -> dict[str, Delta]:
    """Deltas of weights restricted to ``columns``, padded with zeros to the weights' ``in_features``."""
    start, stop = columns
    padded: dict[int, torch.Tensor] = {}  # a shared factor stays shared

    def pad(t: torch.Tensor) -> torch.Tensor:
        if id(t) not in padded:
            out = t.new_zeros(t.shape[0], in_features)
            out[:, start:stop] = t
            padded[id(t)] = out
        return padded[id(t)]

    return {
        key: LowRankDelta(d.up, pad(d.down)) if isinstance(d, LowRankDelta) else DenseDelta(pad(d.delta))
        for key, d in deltas.items()
    }


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
