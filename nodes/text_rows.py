"""Text rows from a ComfyUI CLIP, exactly as the sampler's conditioning holds them.

How a prompt's rows are laid out and where its last content token is comes from
the family table (``families.TextSegment``): CLIP chunks of 77 slots, T5 rows
with EOS and padding, Llama-3 rows with BOS and padding, or an LLM chat template
around the text. Besides the conditioning rows and the pooled vector, the
encoder outputs a family reads (HiDream's Llama layers, HunyuanDiT's mT5 rows)
are kept per prompt.
"""

from __future__ import annotations

import weakref
from dataclasses import dataclass, field
from typing import Callable, Iterator, Optional, Sequence

import torch

from ..uce_solver import EncodedPrompt, Segment
from . import families, input_checks
from .families import BOS_PAD_RULE, CLIP_RULE, COND, POOLED, T5_RULE, TEMPLATE_RULE, Family, TextSegment
from .input_checks import quote
from .text_cache import ROW_CACHE, RowCache, encoder_key

ENCODE_BATCH = 64
CHECK_PROGRESS_EVERY = 64
# Tokens of one prompt read by an encoder without a chunk size (T5, LLMs): what the families were trained
# with at most (Flux: 512 T5 tokens); only the cheap length bound uses it.
MAX_PROMPT_TOKENS = 512
EXTRAS_BATCH = 8  # prompts held at a time when the family reads extra encoder outputs
# A word the template rule puts into the family's prompt to see which tokens follow the user's text.
_PROBE_TEXT = "x"


class PromptTooLongError(ValueError):
    """A prompt needs more than one 77-slot CLIP chunk."""


@dataclass(frozen=True)
class EncodedText:
    """One prompt's conditioning rows (with their segments), if asked for its pooled vector, and the
    extra encoder outputs its family reads (per source: [layers, rows, width] and the rows' segments)."""

    prompt: EncodedPrompt
    pooled: Optional[torch.Tensor] = None  # [width] or None when not encoded one prompt per pass
    extras: dict = field(default_factory=dict)

    @property
    def text(self) -> str:
        return self.prompt.text

    @property
    def rows(self) -> torch.Tensor:
        return self.prompt.rows

    def extra_prompt(self, source: str, layer: Optional[int]) -> EncodedPrompt:
        """The rows of an extra encoder output (of one of its layers, where it has several), as a prompt."""
        if source not in self.extras:
            raise ValueError(f"prompt {self.text!r} was encoded without the text encoder's {source!r} output")
        rows, segments = self.extras[source]
        rows = rows if layer is None else rows[layer]
        return EncodedPrompt(self.text, rows.to(torch.float32), segments=segments)


_forces_weights_off: set = set()


def tokenize(clip, text: str) -> dict:
    """Tokens of one prompt per encoder, with prompt-weighting syntax such as (word:1.2) disabled.

    Some tokenizers (Qwen-Image's, Z-Image's, Flux.2's …) always disable it and
    refuse the option; they are called without it.
    """
    tokenizer_class = type(clip.tokenizer)
    if tokenizer_class not in _forces_weights_off:
        try:
            return clip.tokenize(text, disable_weights=True)
        except TypeError as error:
            if "disable_weights" not in str(error):
                raise
            _forces_weights_off.add(tokenizer_class)
    return clip.tokenize(text)


def clip_encoders(clip) -> frozenset[str]:
    """The CLIP's tokenizer keys ("l", "g", "t5xxl", "qwen25_7b" …): which text encoders it has."""
    return frozenset(tokenize(clip, ""))


def last_token_slot(clip, text: str, tokens: dict, names: Optional[Sequence[str]] = None) -> int:
    """Slot n of the last real token in one 77-slot CLIP chunk (0 for an empty prompt, i.e. BOS).

    Every encoder in ``names`` (default: all of ``tokens``; SDXL: g and l) must agree.
    """
    slots = {}
    for name in names or tokens:
        chunks = tokens[name]
        if len(chunks) != 1:
            raise PromptTooLongError(
                f"prompt {quote(text)} is longer than one 77-token chunk ({len(chunks)} chunks); UCE edits one chunk "
                "per prompt: shorten it to at most 75 tokens"
            )
        end = _first(chunks[0], _end_token(clip, name), start=1)
        if end is None:
            raise PromptTooLongError(f"prompt {quote(text)} fills its whole chunk with no end token; shorten it")
        slots[name] = end - 1
    if len(set(slots.values())) != 1:
        raise ValueError(f"the text encoders disagree on where prompt {quote(text)} ends: {slots}")
    return next(iter(slots.values()))


def prompt_segments(
    clip,
    family: Family,
    text: str,
    tokens: dict,
    cond_rows: Optional[int],
    layout: Optional[Sequence[TextSegment]] = None,
) -> tuple[Segment, ...]:
    """The segments of one prompt's conditioning (rows and last content token per text encoder).

    ``layout``: the segments of another encoder output than the conditioning
    (default: the family's conditioning segments the CLIP has).

    ``cond_rows``: how many rows the encoder gave for it (None before encoding: only
    the checks that need no rows run). A last segment whose padding the model masks
    stops at EOS: the rows after it are not part of the prompt's text. Raises
    PromptTooLongError or ValueError when the prompt or the layout is not what the
    family expects.
    """
    parts = []  # (rows or None for "the rest", last or a function of the rows)
    present = list(layout) if layout is not None else _present_segments(clip, family, tokens)
    kept = None  # rows of the last segment the model reads, when it masks its padding
    for segment in present:
        if segment.masked_padding and segment is not present[-1]:
            raise ValueError(f"{family.name}: only the last text segment can have masked padding")
        names = segment.encoders or tuple(tokens)
        if segment.rule == CLIP_RULE:
            last = last_token_slot(clip, text, tokens, names)
            parts.append((len(tokens[names[0]][0]), last))
        elif segment.rule == T5_RULE:
            (chunk,) = tokens[names[0]]
            end = _first(chunk, _end_token(clip, names[0]), start=0)
            end = len(chunk) if end is None else end
            parts.append((len(chunk), end - 1))
            if segment.masked_padding:
                kept = min(end + 1, len(chunk))
        elif segment.rule == BOS_PAD_RULE:
            (chunk,) = tokens[names[0]]
            pad = _first(chunk, _special_token(clip, names[0], "pad_token"), start=1)
            parts.append((len(chunk), (len(chunk) if pad is None else pad) - 1))
        elif segment.rule == TEMPLATE_RULE:
            parts.append((None, _template_suffix(clip, family, names[0], text, tokens)))
        else:
            raise ValueError(f"unknown text segment rule {segment.rule!r}")
    if cond_rows is None:
        return ()
    fixed = sum(rows for rows, _ in parts if rows is not None)
    segments, start = [], 0
    for rows, last in parts:
        if rows is None:  # a template segment: the rows left; ``last`` counts its suffix from the end
            rows = cond_rows - fixed
            last = max(rows - 1 - last, -1)
        segments.append(Segment(start, start + rows, last))
        start += rows
    if start != cond_rows:
        raise ValueError(
            f"the {family.name} text encoder gave {cond_rows} rows for prompt {quote(text)}, expected {start} "
            "(an unexpected conditioning layout: is this CLIP the one loaded with the MODEL?)"
        )
    if kept is not None:
        segments[-1] = Segment(segments[-1].start, segments[-1].start + kept, segments[-1].last)
    return tuple(segments)


_widths: dict = {}


def encoder_widths(clip) -> dict[str, int]:
    """Widths of what the CLIP outputs, from one pass: COND rows, the POOLED vector (if it has one) and
    every extra output (e.g. "conditioning_llama3").

    Does not depend on the tokenizers agreeing, so a CLIP of another family is
    reported by its width rather than by a tokenizer error. Remembered per encoder.
    """
    key = encoder_key(clip)
    if key not in _widths:
        out = clip.encode_from_tokens(clip.tokenize(""), return_pooled=True, return_dict=True)
        names = {"cond": COND, "pooled_output": POOLED}
        widths = {
            names.get(name, name): value.shape[-1]
            for name, value in out.items()
            if isinstance(value, torch.Tensor) and value.ndim >= 2 and value.is_floating_point()
        }
        if key is None:
            return widths
        _widths[key] = widths
    return _widths[key]


def conditioning_width(clip) -> int:
    """Width of the CLIP's conditioning rows (768 SD1.x, 1024 SD2.x, 2048 SDXL, 4096 T5 …)."""
    return encoder_widths(clip)[COND]


def check_prompts(
    clip,
    texts: Sequence[str],
    family: Optional[Family] = None,
    cache: Optional[RowCache] = ROW_CACHE,
    progress: Optional[Callable[[int, int], None]] = None,
    origin: Optional[Callable[[str], str]] = None,
) -> None:
    """Raise PromptTooLongError (or ValueError) for a prompt the family cannot edit, before anything is encoded.

    A text too long for any of the CLIP's tokenizers is refused by its length
    alone, before tokenizing. Prompts already in ``cache`` were checked when they
    were encoded and are skipped. ``progress(done, total)`` is called as prompts
    are tokenized (it may raise to interrupt); ``origin(text)`` says where a
    prompt came from (e.g. the template that made it), for the error message.
    """
    family = family or families.family_of_clip(clip_encoders(clip))
    distinct = list(dict.fromkeys(texts))
    limit = character_limit(clip)
    key = encoder_key(clip) if cache is not None else None
    for index, text in enumerate(distinct):
        try:
            if len(text) > limit and len(" ".join(text.split())) > limit:
                raise PromptTooLongError(
                    f"prompt {quote(text)} is longer than this CLIP's text encoders read in one prompt "
                    f"(at most {limit:,} characters): shorten it"
                )
            formatted = family.prompt_format.format(text)
            if key is None or not cache.contains((key, formatted)):
                _check_layouts(clip, family, text, tokenize(clip, formatted))
        except PromptTooLongError as error:
            where = origin(text) if origin is not None else ""
            raise PromptTooLongError(f"{error}{'; ' + where if where else ''}") from None
        if progress is not None and (index % CHECK_PROGRESS_EVERY == 0 or index == len(distinct) - 1):
            progress(index + 1, len(distinct))


_character_limits: "weakref.WeakKeyDictionary[object, int]" = weakref.WeakKeyDictionary()


def character_limit(clip) -> int:
    """More characters than any prompt the CLIP's tokenizers can read holds (a one-chunk CLIP reads 77
    tokens; others are bounded at MAX_PROMPT_TOKENS); each token is at most its longest vocabulary entry."""
    tokenizer = clip.tokenizer
    if tokenizer not in _character_limits:
        limits = []
        for part in [tokenizer, *vars(tokenizer).values()]:
            vocabulary = getattr(getattr(part, "tokenizer", None), "get_vocab", None)
            if vocabulary is None:
                continue
            tokens = min(getattr(part, "max_length", MAX_PROMPT_TOKENS) or MAX_PROMPT_TOKENS, MAX_PROMPT_TOKENS)
            limits.append(tokens * max(map(len, vocabulary())))
        _character_limits[tokenizer] = max(limits, default=input_checks.MAX_LINE_CHARS)
    return _character_limits[tokenizer]


def iter_encoded(
    clip,
    texts: Sequence[str],
    progress: Optional[Callable[[int, int], None]] = None,
    batch_size: int = ENCODE_BATCH,
    cache: Optional[RowCache] = ROW_CACHE,
    family: Optional[Family] = None,
    pooled: bool = False,
) -> Iterator[EncodedText]:
    """Encode ``texts`` in order through ComfyUI's own conditioning path; yield one EncodedText per text.

    Where the family allows it and no pooled vector is needed, several prompts
    of equal token length are passed as the chunks of one long prompt, which
    ComfyUI encodes as one batch (weights all 1, so nothing is interpolated);
    each chunk's rows are exactly that prompt's conditioning. Otherwise (or with
    ``pooled``: ComfyUI returns the first chunk's pooled vector only) one prompt
    per pass. Clip skip, tokenizer options and CLIP patches (LoRA) apply as for
    CLIPTextEncode. Prompts found in ``cache`` are not encoded again.
    """
    family = family or families.family_of_clip(clip_encoders(clip))
    key = encoder_key(clip) if cache is not None else None
    if family.extra_sources:  # many hidden layers per prompt (HiDream: 32 Llama layers, ~32 MiB in bf16)
        batch_size = min(batch_size, EXTRAS_BATCH)
    for start in range(0, len(texts), batch_size):
        batch = list(texts[start : start + batch_size])
        found = {}
        if key is not None:
            for text in batch:
                hit = cache.get((key, family.prompt_format.format(text)))
                if hit is not None and (hit.pooled is not None or not pooled):
                    found[text] = hit
        missing = list(dict.fromkeys(t for t in batch if t not in found))
        one_per_pass = pooled or not family.batch_encode or bool(family.extra_sources)
        for text, encoded in _encode(clip, family, missing, one_per_pass):
            found[text] = encoded
            if key is not None:
                cache.put((key, family.prompt_format.format(text)), encoded)
        yield from (found[text] for text in batch)
        if progress is not None:
            progress(min(start + batch_size, len(texts)), len(texts))


def encode_prompts(clip, texts: Sequence[str], **options) -> dict[str, EncodedText]:
    """Every distinct text of ``texts`` encoded (see :func:`iter_encoded`), by text."""
    return {encoded.text: encoded for encoded in iter_encoded(clip, list(dict.fromkeys(texts)), **options)}


def _encode(clip, family: Family, texts: list[str], one_per_pass: bool) -> Iterator[tuple[str, EncodedText]]:
    tokenized = {text: tokenize(clip, family.prompt_format.format(text)) for text in texts}
    if one_per_pass:
        groups = [[text] for text in texts]
    else:  # prompts whose chunks have equal lengths can share one pass
        by_shape: dict[tuple, list[str]] = {}
        for text in texts:
            shape = tuple((name, tuple(len(c) for c in chunks)) for name, chunks in tokenized[text].items())
            by_shape.setdefault(shape, []).append(text)
        groups = list(by_shape.values())
    for group in groups:
        for text in group:
            _check_layouts(clip, family, text, tokenized[text])  # refuse bad prompts before encoding
        extras = [{}] * len(group)
        if len(group) == 1:
            out = clip.encode_from_tokens(tokenized[group[0]], return_pooled=True, return_dict=True)
            pooled = out.get("pooled_output")
            rows = out["cond"][0:1]
            pooled_rows = [None if pooled is None else pooled[0].to(torch.float32)]
            extras = [_extra_outputs(clip, family, group[0], tokenized[group[0]], out)]
        else:
            names = tokenized[group[0]]
            merged = {name: [chunk for text in group for chunk in tokenized[text][name]] for name in names}
            out = clip.encode_from_tokens(merged, return_dict=True)
            rows = out["cond"].reshape(len(group), -1, out["cond"].shape[-1])
            pooled_rows = [None] * len(group)
        for text, prompt_rows, pooled, extra in zip(group, rows.to(torch.float32), pooled_rows, extras):
            segments = prompt_segments(clip, family, text, tokenized[text], prompt_rows.shape[0])
            if segments[-1].stop < prompt_rows.shape[0]:  # masked padding: not text the model reads
                prompt_rows = prompt_rows[: segments[-1].stop].clone()
            yield text, EncodedText(EncodedPrompt(text, prompt_rows, segments=segments), pooled, extra)


def _check_layouts(clip, family: Family, text: str, tokens: dict) -> None:
    """Raise for a prompt whose tokens do not fit the family's layouts (conditioning and extra outputs)."""
    prompt_segments(clip, family, text, tokens, None)
    for layout in family.extra_sources.values():
        prompt_segments(clip, family, text, tokens, None, layout=(layout,))


def _extra_outputs(clip, family: Family, text: str, tokens: dict, out: dict) -> dict:
    """The family's extra encoder outputs of one prompt: {source: ([layers, rows, width], segments)}."""
    extras = {}
    for source, layout in family.extra_sources.items():
        if source not in out:
            raise ValueError(
                f"this CLIP gives no {source!r} output, which the {family.name} MODEL reads: connect the CLIP "
                "loaded with this MODEL (with all of its text encoders)"
            )
        rows = out[source][0]  # [rows, width] or [layers, rows, width] (HiDream: 32 Llama layers), as encoded
        extras[source] = (rows, prompt_segments(clip, family, text, tokens, rows.shape[-2], layout=(layout,)))
    return extras


def _present_segments(clip, family: Family, tokens: dict):
    """The family's segments whose text encoder the CLIP really has (SD3 may come without T5 or CLIP-G)."""
    return [s for s in family.segments if not s.encoders or any(_has_encoder(clip, name) for name in s.encoders)]


def _has_encoder(clip, name: str) -> bool:
    model = clip.cond_stage_model
    return any(getattr(model, attribute, None) is not None for attribute in (name, f"clip_{name}"))


_suffixes: dict = {}


def _template_suffix(clip, family: Family, name: str, text: str, tokens: dict) -> int:
    """How many tokens the family's template puts after the user's text (the same for every prompt)."""
    key = (encoder_key(clip), family.name, name)
    if key not in _suffixes or key[0] is None:
        empty = _ids(tokenize(clip, family.prompt_format.format(""))[name][0])
        probe = _ids(tokenize(clip, family.prompt_format.format(_PROBE_TEXT))[name][0])
        common = 0
        while common < min(len(empty), len(probe)) and empty[-1 - common] == probe[-1 - common]:
            common += 1
        _suffixes[key] = (common, empty[len(empty) - common :])
    suffix_length, suffix = _suffixes[key]
    (chunk,) = tokens[name]
    if _ids(chunk)[len(chunk) - suffix_length :] != suffix:
        raise ValueError(f"cannot find where prompt {quote(text)} ends in the {family.name} text template")
    return suffix_length


def _ids(chunk) -> list:
    return [t[0] for t in chunk]


def _first(chunk, token: int, start: int) -> Optional[int]:
    ids = _ids(chunk)
    return next((i for i in range(start, len(ids)) if isinstance(ids[i], int) and ids[i] == token), None)


def _end_token(clip, name: str) -> int:
    return _special_token(clip, name, "end_token")


def _special_token(clip, name: str, which: str) -> int:
    tokenizer = getattr(clip.tokenizer, f"clip_{name}", None) or getattr(clip.tokenizer, name, None)
    token = getattr(tokenizer, which, None)
    if token is None:
        raise ValueError(f"cannot find the {which} of text encoder {name!r}; this CLIP type is not supported")
    return token
