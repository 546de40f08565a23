"""A disk store of the preserve prompts' Gram matrices and samples, so that they survive ComfyUI restarts.

Encoding a long preserve list (the art preset's ~1,700 artists) takes minutes on
a CPU; the RAM memo of ``preserve_set`` is lost when ComfyUI restarts. Each
entry here is one group's float64 Gram matrix, its row count and its sample of
rows, in a safetensors file (never pickle) in ComfyUI's user folder
(``<user>/uce_cache/preserve``; ``UCE_PRESERVE_CACHE_DIR`` overrides it; not the
temp folder, which ComfyUI empties at start).

An entry's key names everything its numbers depend on: a fingerprint of the
text encoder's effective weights (its base weights, read as loaded from the
checkpoint even while ComfyUI has patches applied in place, and its patches with
their strengths: a LoRA), the encoder's configuration and options (clip skip,
tokenizer options, the device it encodes on), the family, the group's row view,
the token mode, the exact prompt list, the solve device and the versions of
ComfyUI, torch and of the pack's code that makes rows. The key is stored in the
file and compared on load; the tensors carry a checksum. A file that is
truncated, corrupt or for another key is deleted and rebuilt, never used.

Files are written atomically (a temporary file in the same folder, fsync,
rename). The folder is bounded (``UCE_PRESERVE_CACHE_MB``, default 2048; 0
turns the store off): using an entry marks it recent, and the least recently
used files go first.
"""

from __future__ import annotations

import dataclasses
import enum
import functools
import hashlib
import json
import logging
import os
import threading
import time
import types
import uuid
import weakref
from collections import OrderedDict
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Optional, Sequence

import safetensors.torch
import torch

FORMAT = 1
DIR_ENV = "UCE_PRESERVE_CACHE_DIR"
MB_ENV = "UCE_PRESERVE_CACHE_MB"
DEFAULT_MB = 2048
SUFFIX = ".safetensors"
KEY_FIELD = "uce_preserve_key"
TEMP_MAX_AGE_S = 3600.0  # temporary files older than this were left by a crash and are removed
HASH_THREADS = max(1, min(4, os.cpu_count() or 1))
HASH_CHUNK_BYTES = 16 * 2**20  # part of the fingerprint's definition

# The pack's files whose code turns prompts into preserve rows and sums them: any change misses.
_ROW_CODE = (
    "nodes/text_rows.py",
    "nodes/families.py",
    "nodes/model_weights.py",
    "nodes/preserve_set.py",
    "nodes/preserve_cache.py",
    "uce_solver/prompts.py",
    "uce_solver/solver.py",
)
_PACK_ROOT = Path(__file__).resolve().parents[1]

# Attributes of the encoder's modules and tokenizers that shape its rows without being weights.
# Only settings fixed at load time: what ComfyUI changes per encode (layer, layer_idx …) is not read.
_MODULE_SETTINGS = (
    "options_default", "special_tokens", "enable_attention_masks", "zero_out_masked", "layer_norm_hidden_state",
    "return_attention_masks", "max_length", "num_layers", "dtypes", "clip", "clip_name", "dtype", "dtype_llama",
)
_TOKENIZER_SETTINGS = (
    "max_length", "min_length", "min_padding", "pad_left", "tokenizer_adds_end_token", "tokens_start", "start_token",
    "end_token", "pad_token", "pad_with_end", "pad_to_max_length", "max_word_length", "embedding_identifier",
    "embedding_size", "embedding_key", "clip", "clip_name", "llama_template", "disable_weights",
)

log = logging.getLogger(__name__)


class Uncacheable(Exception):
    """Something that determines the rows cannot be fingerprinted (the store is then not used)."""


# --- fingerprints -----------------------------------------------------------------------------

_weight_memo: "weakref.WeakKeyDictionary[object, dict]" = weakref.WeakKeyDictionary()
_tokenizer_memo: "weakref.WeakKeyDictionary[object, str]" = weakref.WeakKeyDictionary()
_patch_memo: "OrderedDict[str, str]" = OrderedDict()
_PATCH_MEMO_ENTRIES = 16
_code_digest: Optional[str] = None
_memo_lock = threading.Lock()


def encoder_fingerprint(clip, pooled: bool = True) -> Optional[str]:
    """A digest of what makes this CLIP's rows, besides the text and its options; None if it cannot be cached.

    Base weights (as loaded: where a patched weight is applied in place, its
    backup), their patches (LoRA: values, strengths, offsets, functions), the
    encoder's and tokenizer's fixed settings and module classes. Weights the rows
    cannot depend on are left out (see :func:`weights_fingerprint`; ``pooled``:
    whether the pooled vector is read). The base part is computed once per live
    text-encoder object, the patch part once per patch set.
    """
    patcher = clip.patcher
    if getattr(patcher, "forced_hooks", None) or getattr(clip, "apply_hooks_to_conds", None):
        return None  # hooks may change the encoder per step
    if getattr(patcher, "object_patches", None) or getattr(patcher, "weight_wrapper_patches", None):
        return None  # replaced modules or weight wrappers: not described by weights alone
    try:
        parts = [
            weights_fingerprint(clip.cond_stage_model, getattr(patcher, "backup", None), pooled=pooled),
            patches_fingerprint(patcher),
            _settings_fingerprint(clip),
        ]
    except Uncacheable as reason:
        log.debug("UCE preserve cache: encoder not cacheable: %s", reason)
        return None
    return _sha256("|".join(parts))


def weights_fingerprint(
    module: torch.nn.Module, backup: Optional[dict] = None, memo: bool = True, pooled: bool = True
) -> str:
    """A digest of the state-dict tensors of ``module`` (name, dtype, shape and all bytes), as loaded.

    Where ``backup`` (a ModelPatcher's) holds the original of a weight patched in
    place, the original is read, so the digest does not depend on whether the
    model is currently loaded with its patches. Tensors on an accelerator are
    copied to the CPU one at a time; hashing runs on a few threads.

    Left out, because no row can depend on them and ComfyUI leaves them
    uninitialised (different bytes at every load) when a checkpoint lacks them:
    CLIP's ``logit_scale``, and its ``text_projection`` unless ``pooled`` and that
    CLIP returns its projected pooled vector.
    """
    digests = _weight_digests(module, backup or {}, memo)
    records = [f"{name}:{digest}" for name, digest in sorted(digests.items()) if not _unused(module, name, pooled)]
    return _sha256("\n".join(records))


_TEXT_PROJECTION = "transformer.text_projection.weight"


def _unused(module: torch.nn.Module, name: str, pooled: bool) -> bool:
    """Whether the weight ``name`` cannot change the rows (conditioning, and the pooled vector if ``pooled``)."""
    if name == "logit_scale" or name.endswith(".logit_scale"):
        return True
    if name != _TEXT_PROJECTION and not name.endswith("." + _TEXT_PROJECTION):
        return False
    if not pooled:
        return True
    owner_name = name[: -len(_TEXT_PROJECTION)].rstrip(".")
    try:
        owner = module.get_submodule(owner_name) if owner_name else module
    except AttributeError:
        return False
    options = getattr(owner, "options_default", None)  # (layer, layer_idx, return_projected_pooled)
    return isinstance(options, tuple) and len(options) > 2 and options[2] is False


def _weight_digests(module: torch.nn.Module, backup: dict, memo: bool) -> dict[str, str]:
    """name -> digest of every state-dict tensor of ``module``, remembered per live module."""
    if memo:
        with _memo_lock:
            known = _weight_memo.get(module)
        if known is not None:
            return known
    state = module.state_dict()
    names = sorted(state)
    tensors = [backup[name].weight if name in backup else state[name] for name in names]
    # Every tensor is cut into chunks hashed on the threads (hashlib releases the GIL), so one big
    # embedding does not leave the other threads idle.
    with ThreadPoolExecutor(HASH_THREADS) as pool:
        digests = dict(zip(names, _tensor_digests(tensors, pool.map)))
    if memo:
        with _memo_lock:
            _weight_memo[module] = digests
    return digests


def patches_fingerprint(patcher) -> str:
    """A digest of a ModelPatcher's weight patches (every key's list, in order), remembered per patch set."""
    patches = getattr(patcher, "patches", {}) or {}
    if not patches:
        return "no patches"
    memo_key = str(getattr(patcher, "patches_uuid", ""))
    with _memo_lock:
        known = _patch_memo.get(memo_key) if memo_key else None
        if known is not None:
            _patch_memo.move_to_end(memo_key)
            return known
    h = hashlib.sha256()
    for key in sorted(patches, key=repr):
        _feed(h, key)
        _feed(h, list(patches[key]))
    digest = h.hexdigest()
    if memo_key:
        with _memo_lock:
            _patch_memo[memo_key] = digest
            while len(_patch_memo) > _PATCH_MEMO_ENTRIES:
                _patch_memo.popitem(last=False)
    return digest


def clear_memo() -> None:
    """Forget the remembered fingerprints (as after a restart)."""
    with _memo_lock:
        _weight_memo.clear()
        _tokenizer_memo.clear()
        _patch_memo.clear()


def _settings_fingerprint(clip) -> str:
    """The encoder's module classes and fixed settings, and the tokenizer's (with its vocabulary)."""
    model = clip.cond_stage_model
    described = []
    for name, module in model.named_modules():
        settings = {a: _plain(getattr(module, a)) for a in _MODULE_SETTINGS if a in vars(module)}
        described.append((name, _type_name(module), sorted(settings.items())))
    return _sha256(repr(described) + "|" + _tokenizer_fingerprint(clip.tokenizer))


def _tokenizer_fingerprint(tokenizer) -> str:
    with _memo_lock:
        known = _tokenizer_memo.get(tokenizer)
    if known is not None:
        return known
    described = []
    parts = sorted(((n, v) for n, v in vars(tokenizer).items() if hasattr(v, "tokenize_with_weights")), key=lambda p: p[0])
    for name, part in [("", tokenizer)] + parts:
        settings = {a: _plain(getattr(part, a)) for a in _TOKENIZER_SETTINGS if a in vars(part)}
        vocab = getattr(part, "inv_vocab", None)
        vocab_digest = _sha256(repr(sorted(vocab.items()))) if isinstance(vocab, dict) else None
        described.append((name, _type_name(part), sorted(settings.items()), vocab_digest))
    digest = _sha256(repr(described))
    try:
        with _memo_lock:
            _tokenizer_memo[tokenizer] = digest
    except TypeError:  # not weakly referenceable: computed each time
        pass
    return digest


def _plain(value):
    """A setting as plain data that is the same in every process (sets sorted, no hash-seeded order)."""
    if value is None or isinstance(value, (bool, int, float, str)):
        return value
    if isinstance(value, (set, frozenset)):
        return sorted((_plain(v) for v in value), key=repr)
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    if isinstance(value, dict):
        return sorted(((repr(k), _plain(v)) for k, v in value.items()), key=repr)
    if isinstance(value, (torch.dtype, torch.device)):
        return repr(value)
    if isinstance(value, enum.Enum):
        return f"{_type_name(value)}.{value.name}"
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        return [_type_name(value), [(f.name, _plain(getattr(value, f.name))) for f in dataclasses.fields(value)]]
    return _type_name(value)


def _type_name(obj) -> str:
    cls = obj if isinstance(obj, type) else type(obj)
    return f"{cls.__module__}.{cls.__qualname__}"


def _tensor_digest(tensor: torch.Tensor) -> str:
    """dtype, shape and sha256 of all bytes of a tensor (a quantized tensor: its data and layout)."""
    return _tensor_digests([tensor], map)[0]


def _tensor_digests(tensors: Sequence[torch.Tensor], mapper) -> list[str]:
    """:func:`_tensor_digest` of each tensor; ``mapper`` (map, or a thread pool's) hashes the chunks."""
    layouts, chunks = [], []
    for tensor in tensors:
        if hasattr(tensor, "_qdata"):  # ComfyUI's QuantizedTensor: hash what it is made of
            h = hashlib.sha256()
            _feed(h, ("quantized", _type_name(getattr(tensor, "_layout_type", None))))
            _feed(h, tensor._qdata)
            _feed(h, getattr(tensor, "_layout_params", None))
            layouts.append((h.hexdigest(), None))  # complete already
            continue
        header, flat = _plain_tensor(tensor)
        step = max(1, HASH_CHUNK_BYTES // max(1, flat.element_size()))
        parts = [flat[start : start + step] for start in range(0, flat.numel(), step)]
        layouts.append((header, len(parts)))
        chunks.extend(parts)
    hashed = iter(list(mapper(_chunk_digest, chunks)))
    digests = []
    for header, parts in layouts:
        if parts is None:
            digests.append(header)
            continue
        h = hashlib.sha256(header.encode())
        for _ in range(parts):
            h.update(next(hashed))
        digests.append(h.hexdigest())
    return digests


def _plain_tensor(tensor: torch.Tensor) -> tuple[str, torch.Tensor]:
    """(dtype, shape and kind of a tensor as text, its data as a flat plain tensor)."""
    tensor = tensor.detach()
    if tensor.device.type == "meta":
        raise Uncacheable("a weight is on the meta device")
    header = f"{tensor.dtype}{list(tensor.shape)}"
    if type(tensor) not in (torch.Tensor, torch.nn.Parameter):  # e.g. a GGUF tensor: its raw data and settings
        kind = _type_name(tensor)
        settings = sorted((k, repr(v)) for k, v in vars(tensor).items() if isinstance(v, (int, float, str, tuple, enum.Enum)))
        header += f"{kind}{settings!r}"
        try:
            tensor = tensor.as_subclass(torch.Tensor)
            tensor.untyped_storage()
        except Exception as error:
            raise Uncacheable(f"a weight of type {kind}: {error}") from error
    return header, tensor.reshape(-1)


def _chunk_digest(chunk: torch.Tensor) -> bytes:
    return hashlib.sha256(chunk.to("cpu").contiguous().view(torch.uint8).numpy()).digest()


def _feed(h, obj, depth: int = 0) -> None:
    """Hash any patch value: tensors by their bytes, containers item by item, objects by class and fields."""
    if depth > 12:
        raise Uncacheable("patch value nested too deeply")
    if obj is None or isinstance(obj, (bool, int, float, str, bytes)):
        h.update(f"{type(obj).__name__}:{obj!r};".encode())
    elif isinstance(obj, torch.Tensor):
        h.update(f"T:{_tensor_digest(obj)};".encode())
    elif isinstance(obj, (list, tuple)):
        h.update(f"{type(obj).__name__}[{len(obj)}:".encode())
        for item in obj:
            _feed(h, item, depth + 1)
        h.update(b"]")
    elif isinstance(obj, dict):
        h.update(f"dict[{len(obj)}:".encode())
        for key in sorted(obj, key=repr):
            _feed(h, key, depth + 1)
            _feed(h, obj[key], depth + 1)
        h.update(b"]")
    elif isinstance(obj, (set, frozenset)):
        h.update(f"set:{sorted(repr(item) for item in obj)!r};".encode())
    elif isinstance(obj, (torch.dtype, torch.device)):
        h.update(f"{obj!r};".encode())
    elif isinstance(obj, enum.Enum):
        h.update(f"E:{_type_name(obj)}.{obj.name};".encode())
    elif isinstance(obj, functools.partial):
        h.update(b"partial(")
        _feed(h, (obj.func, obj.args, obj.keywords), depth + 1)
        h.update(b")")
    elif isinstance(obj, types.MethodType):  # a bound method: its function and the object it is bound to
        h.update(b"method(")
        _feed(h, (obj.__func__, obj.__self__), depth + 1)
        h.update(b")")
    elif isinstance(obj, type) or callable(obj) and not hasattr(obj, "__dict__") or _is_function(obj):
        name = getattr(obj, "__qualname__", None)
        if name is None or "<lambda>" in name or "<locals>" in name:
            raise Uncacheable(f"patch function {obj!r} has no stable name")
        h.update(f"F:{getattr(obj, '__module__', '')}.{name};".encode())
    elif hasattr(obj, "__dict__"):  # e.g. comfy.weight_adapter adapters (LoRA, LoHa …)
        h.update(f"O:{_type_name(obj)}(".encode())
        for name in sorted(vars(obj)):
            if not name.startswith("__"):
                _feed(h, name, depth + 1)
                _feed(h, vars(obj)[name], depth + 1)
        h.update(b")")
    else:
        text = repr(obj)
        if " at 0x" in text:
            raise Uncacheable(f"patch value {text} has no stable description")
        h.update(f"R:{_type_name(obj)}:{text};".encode())


def _is_function(obj) -> bool:
    return isinstance(obj, (types.FunctionType, types.BuiltinFunctionType, types.MethodType))


def _sha256(text: str) -> str:
    return hashlib.sha256(text.encode()).hexdigest()


def _code_fingerprint() -> str:
    """The pack's row-making code, so that a changed pack never reads numbers an older one stored."""
    global _code_digest
    if _code_digest is None:
        h = hashlib.sha256()
        for relative in _ROW_CODE:
            path = _PACK_ROOT / relative
            h.update(relative.encode())
            h.update(path.read_bytes() if path.is_file() else b"missing")
        _code_digest = h.hexdigest()
    return _code_digest


def _comfyui_version() -> str:
    try:
        import comfyui_version

        return str(comfyui_version.__version__)
    except Exception:  # an unusual install: the code fingerprint and torch still apply
        return "unknown"


def _device_name(device) -> str:
    device = torch.device(device)
    if device.type == "cuda" and torch.cuda.is_available():
        return f"cuda:{torch.cuda.get_device_name(device)}"
    return device.type


# --- entry keys -------------------------------------------------------------------------------


def entry_key(
    clip,
    family,
    view_key: tuple,
    texts: Sequence[str],
    token_mode: str,
    device,
    sample_rows: int,
    one_per_pass: bool,
    chunk_dtype: torch.dtype = torch.float64,
    encoder: Optional[str] = None,
) -> Optional[dict]:
    """Everything one group's Gram matrix and sample depend on, as plain data; None if not cacheable.

    ``one_per_pass``: the pooled vector is read (prompts are then encoded one per pass).
    ``encoder``: the CLIP's :func:`encoder_fingerprint` (with that ``pooled``) if already computed.
    """
    if any("embedding:" in text for text in texts):
        return None  # textual-inversion files are read at tokenization: not covered by the fingerprint
    encoder = encoder or encoder_fingerprint(clip, pooled=one_per_pass)
    if encoder is None:
        return None
    return {
        "format": FORMAT,
        "code": _code_fingerprint(),
        "comfyui": _comfyui_version(),
        "torch": torch.__version__,
        "encoder": encoder,
        "clip_layer": repr(clip.layer_idx),
        "tokenizer_options": repr(sorted(clip.tokenizer_options.items())),
        "encode_device": _device_name(clip.patcher.load_device),
        "family": family.name,
        "family_entry": _sha256(repr(_plain(family))),
        "view": [str(part) for part in view_key],
        "token_mode": token_mode,
        "one_per_pass": bool(one_per_pass),
        "solve_device": _device_name(device),
        "sample_rows": int(sample_rows),
        "chunk_dtype": str(chunk_dtype),
        "prompts": len(texts),
        "texts": _sha256(json.dumps(list(texts), ensure_ascii=False)),
    }


def _key_text(key: dict) -> str:
    return json.dumps(key, sort_keys=True, separators=(",", ":"))


# --- the store --------------------------------------------------------------------------------


@dataclass(frozen=True)
class Entry:
    """One group's stored preserve statistics."""

    gram: torch.Tensor  # float64 [d, d]
    rows: int
    sample: Optional[torch.Tensor]  # [n, d] or None
    prompts: int
    chunk_dtype: torch.dtype = torch.float64


class DiskStore:
    """A folder of entries, one safetensors file per key, bounded in bytes (least recently used go first)."""

    def __init__(self, folder, max_bytes: int):
        self.folder = Path(folder)
        self.max_bytes = int(max_bytes)
        self._lock = threading.Lock()

    def path_of(self, key: dict) -> Path:
        return self.folder / (_sha256(_key_text(key)) + SUFFIX)

    def load(self, key: dict, width: int, device) -> Optional[Entry]:
        """The entry stored for ``key`` (tensors on ``device``), or None; a bad file is deleted."""
        path = self.path_of(key)
        with self._lock:
            try:
                data = path.read_bytes()
            except FileNotFoundError:
                return None
            except OSError as error:
                log.warning("UCE preserve cache: cannot read %s: %s", path, error)
                return None
            try:
                entry = _decode(data, _key_text(key), width)
            except Exception as error:  # anything unexpected in the file: never trust it
                log.warning("UCE preserve cache: ignoring and deleting %s (%s)", path.name, error)
                _remove(path)
                return None
            try:
                os.utime(path)  # recently used: evicted last
            except OSError:
                pass
        gram = entry.gram.to(device)
        sample = None if entry.sample is None else entry.sample.to(device)
        return Entry(gram, entry.rows, sample, entry.prompts, entry.chunk_dtype)

    def save(self, key: dict, entry: Entry) -> bool:
        """Store ``entry`` atomically, then evict over the bound; False (and a log line) if it was not stored."""
        try:
            data = _encode(_key_text(key), entry)
        except Exception as error:
            log.warning("UCE preserve cache: cannot serialise an entry: %s", error)
            return False
        if len(data) > self.max_bytes:
            return False
        path = self.path_of(key)
        with self._lock:
            try:
                self.folder.mkdir(parents=True, exist_ok=True)
                _write_atomic(path, data)
            except Exception as error:
                log.warning("UCE preserve cache: cannot write %s: %s", path, error)
                return False
            self._evict(keep=path)
        return True

    def total_bytes(self) -> int:
        return sum(size for _, size, _ in self._entries())

    def clear(self) -> None:
        with self._lock:
            for _, _, path in self._entries():
                _remove(path)

    def _entries(self) -> list[tuple[float, int, Path]]:
        found = []
        try:
            candidates = list(self.folder.iterdir())
        except OSError:
            return found
        for path in candidates:
            if path.suffix != SUFFIX or path.name.startswith("."):
                continue
            try:
                stat = path.stat()
            except OSError:
                continue
            found.append((stat.st_mtime, stat.st_size, path))
        return found

    def _evict(self, keep: Path) -> None:
        entries = sorted(self._entries(), key=lambda item: (item[2] == keep, item[0], item[2].name))
        total = sum(size for _, size, _ in entries)
        for _, size, path in entries:
            if total <= self.max_bytes:
                break
            if _remove(path):
                total -= size
        now = time.time()
        for path in self.folder.glob(".*.tmp"):  # left by a crash mid-write
            try:
                if now - path.stat().st_mtime > TEMP_MAX_AGE_S:
                    path.unlink()
            except OSError:
                pass


def default_folder() -> Path:
    override = os.environ.get(DIR_ENV, "").strip()
    if override:
        return Path(override)
    import folder_paths

    return Path(folder_paths.get_user_directory()) / "uce_cache" / "preserve"


def default_max_bytes() -> int:
    text = os.environ.get(MB_ENV, "").strip()
    try:
        megabytes = float(text) if text else DEFAULT_MB
    except ValueError:
        log.warning("UCE preserve cache: %s=%r is not a number; using %d", MB_ENV, text, DEFAULT_MB)
        megabytes = DEFAULT_MB
    return max(0, int(megabytes * 2**20))


def default_store() -> Optional[DiskStore]:
    """The store the nodes use (folder and bound from the environment, read each time); None when off."""
    max_bytes = default_max_bytes()
    if max_bytes <= 0:
        return None
    try:
        folder = default_folder()
    except Exception as error:
        log.warning("UCE preserve cache: no cache folder: %s", error)
        return None
    with _memo_lock:  # one store (and one lock) per folder and bound
        return _stores.setdefault((str(folder), max_bytes), DiskStore(folder, max_bytes))


_stores: dict = {}


def _encode(key_text: str, entry: Entry) -> bytes:
    tensors = {"gram": entry.gram.detach().to("cpu", copy=False).contiguous()}
    if entry.sample is not None:
        tensors["sample"] = entry.sample.detach().to("cpu").contiguous()
    metadata = {
        KEY_FIELD: key_text,
        "rows": str(int(entry.rows)),
        "prompts": str(int(entry.prompts)),
        "chunk_dtype": str(entry.chunk_dtype),
        "content_sha256": _content_digest(tensors),
    }
    return safetensors.torch.save(tensors, metadata=metadata)


def _decode(data: bytes, key_text: str, width: int) -> Entry:
    """Parse and check a stored file completely; raise ValueError on anything unexpected."""
    if len(data) < 8:
        raise ValueError("truncated header")
    header_size = int.from_bytes(data[:8], "little")
    if header_size <= 0 or 8 + header_size > len(data):
        raise ValueError("truncated header")
    header = json.loads(data[8 : 8 + header_size].decode("utf-8"))
    metadata = header.get("__metadata__") or {}
    if metadata.get(KEY_FIELD) != key_text:
        raise ValueError("stored for another key")
    tensors = safetensors.torch.load(data)
    if not set(tensors) <= {"gram", "sample"} or "gram" not in tensors:
        raise ValueError(f"unexpected tensors {sorted(tensors)}")
    if metadata.get("content_sha256") != _content_digest(tensors):
        raise ValueError("checksum mismatch")
    gram, sample = tensors["gram"], tensors.get("sample")
    if gram.dtype != torch.float64 or tuple(gram.shape) != (width, width):
        raise ValueError(f"Gram {gram.dtype} {tuple(gram.shape)}, expected float64 [{width}, {width}]")
    if sample is not None and (not sample.is_floating_point() or sample.ndim != 2 or sample.shape[1] != width):
        raise ValueError(f"sample {sample.dtype} {tuple(sample.shape)}")
    chunk_dtypes = {str(d): d for d in (torch.float64, torch.float32)}
    rows, prompts = int(metadata["rows"]), int(metadata["prompts"])
    if rows < 0 or prompts < 0 or metadata.get("chunk_dtype") not in chunk_dtypes:
        raise ValueError("bad counts")
    return Entry(gram, rows, sample, prompts, chunk_dtypes[metadata["chunk_dtype"]])


def _content_digest(tensors: dict) -> str:
    h = hashlib.sha256()
    for name in sorted(tensors):
        h.update(f"{name}:{_tensor_digest(tensors[name])};".encode())
    return h.hexdigest()


def _write_atomic(path: Path, data: bytes) -> None:
    """Write ``data`` to ``path`` so that readers see the old file, no file or the whole new one."""
    temp = path.with_name(f".{path.stem}.{os.getpid()}.{uuid.uuid4().hex[:8]}.tmp")
    try:
        with open(temp, "wb") as handle:
            _write_all(handle, data)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(temp, path)
    except BaseException:
        _remove(temp)
        raise
    _fsync_folder(path.parent)


def _write_all(handle, data: bytes) -> None:
    view = memoryview(data)
    for start in range(0, len(view), HASH_CHUNK_BYTES):
        handle.write(view[start : start + HASH_CHUNK_BYTES])


def _fsync_folder(folder: Path) -> None:
    if os.name != "posix":
        return
    try:
        fd = os.open(folder, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def _remove(path: Path) -> bool:
    try:
        path.unlink()
        return True
    except FileNotFoundError:
        return True
    except OSError:
        return False
