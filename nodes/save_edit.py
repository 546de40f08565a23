"""UCE Save Edit: write a UCE edit as a LoRA file that ComfyUI (and other UIs) load like any LoRA.

The file holds ΔW at the strength the UCE node applied, so loading it at strength 1.0 on the base model
gives the UCE node's MODEL. Low-rank updates are saved exactly (lora_up = strength * up, lora_down =
down). Dense updates are saved as an exact factorisation of rank min(d_out, d) (one factor is ΔW itself,
the other an identity: no rounding beyond the tensor dtype), or, with ``dense_rank`` / ``dense_energy``,
as their truncated SVD (the relative Frobenius error is reported).

Key names:

* UNet families (SD1.x, SD2.x, SDXL): kohya's ``lora_unet_<module>.lora_down.weight`` /
  ``.lora_up.weight`` / ``.alpha`` with alpha = rank (scale 1). SD1.x and SD2.x use the diffusers block
  names kohya writes for them (``down_blocks_0_attentions_0_…``), SDXL the SGM block names kohya writes for
  SDXL (``input_blocks_4_1_…``): ComfyUI and A1111/Forge read both, diffusers the first for SD1.x/SD2.x and
  the second for SDXL. An SD1.x/SD2.x UNet whose block layout cannot be read off the edited keys keeps the
  SGM names (ComfyUI and A1111/Forge read them).
* Flux.1 and SD3: diffusers' own PEFT names, ``transformer.<diffusers module>.lora_A.weight`` / ``.lora_B.weight``
  (``transformer.context_embedder``, ``transformer.time_text_embed.text_embedder.linear_1``), no alpha: the
  form diffusers and ai-toolkit write for these models; ComfyUI maps it through its own Flux / MMDiT ->
  diffusers tables, which name the modules here.
* The other DiT families: the PEFT form with ComfyUI's module names, ``diffusion_model.<module>.lora_A.weight``
  (down) / ``.lora_B.weight`` (up), no alpha (scale 1): ComfyUI maps ``diffusion_model.<module>`` for every
  family, and it is the form diffusion-pipe and musubi-tuner write for these models.

Tensors are float32: the file is the record of the edit, an update is small next to its weight, and fp16
would round the factors by about 1e-3 relatively (its subnormals would also flush tiny entries); a
LoRA loader casts to the model's dtype anyway, and an edit's low-rank factors are small.
"""

from __future__ import annotations

import json
import math
import os
import re
from dataclasses import dataclass

import folder_paths
import safetensors.torch
import torch
from comfy_api.latest import io, ui

from ..uce_solver import DenseDelta, LowRankDelta
from . import input_checks, inputs
from .edit_record import EditRecord
from .input_checks import InputError

LORA_FOLDER = "loras"
SAVE_DTYPE = torch.float32
UNET_FAMILIES = ("SD1.x", "SD2.x", "SDXL")
DIFFUSERS_TABLES = {"Flux.1": "flux_to_diffusers", "SD3": "mmdit_to_diffusers"}  # comfy.utils maps
KOHYA_DIFFUSERS_NAMES = ("SD1.x", "SD2.x")  # kohya names these UNets' blocks as diffusers does
BASE_MODEL_VERSION = {"SD1.x": "sd_v1", "SD2.x": "sd_v2", "SDXL": "sdxl_base_v1-0", "SD3": "sd3", "Flux.1": "flux1"}
ARCHITECTURE = {
    "SD1.x": "stable-diffusion-v1",
    "SD2.x": "stable-diffusion-v2",
    "SDXL": "stable-diffusion-xl-v1-base",
    "SD3": "stable-diffusion-3",
    "Flux.1": "flux-1",
}
MAX_LAYOUT_GROUP = 16


@dataclass(frozen=True)
class SavedDelta:
    """One weight's update as written: ΔW ≈ up @ down (strength folded into ``up``)."""

    up: torch.Tensor  # [d_out, r]
    down: torch.Tensor  # [r, d]
    kind: str  # "low-rank", "dense", "dense (truncated)"
    error: float = 0.0  # ||ΔW - up @ down||_F / ||ΔW||_F (truncated dense only)
    energy: float = 0.0  # ||ΔW||_F² of a dense update (to pool the errors over keys); 0 for low-rank


# -- factors ----------------------------------------------------------------------------------------
def exact_factors(delta: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """ΔW as up @ down of rank min(d_out, d), exactly: the smaller side is an identity."""
    out_features, in_features = delta.shape
    if in_features <= out_features:
        return delta, torch.eye(in_features, dtype=delta.dtype, device=delta.device)
    return torch.eye(out_features, dtype=delta.dtype, device=delta.device), delta


def truncation_rank(singular: torch.Tensor, dense_rank: int, dense_energy: float) -> int:
    """How many singular values to keep: at most ``dense_rank`` (0 = no cap) and, with ``dense_energy`` > 0,
    the fewest whose squares reach that fraction of the total."""
    full = singular.numel()
    rank = full if dense_rank <= 0 else min(dense_rank, full)
    if dense_energy > 0:
        energy = singular.double().square()
        total = float(energy.sum())
        if total > 0:
            cumulative = torch.cumsum(energy, 0) / total
            needed = int(torch.searchsorted(cumulative, torch.tensor([dense_energy], dtype=cumulative.dtype)).item()) + 1
            rank = min(rank, needed, full)
    return max(1, rank)


def saved_delta(delta, strength: float, dense_rank: int, dense_energy: float) -> SavedDelta:
    """The factors written for one update at ``strength``."""
    if isinstance(delta, LowRankDelta):
        up = delta.up.detach().to("cpu", torch.float32) * strength
        return SavedDelta(up, delta.down.detach().to("cpu", torch.float32), "low-rank")
    if not isinstance(delta, DenseDelta):
        raise TypeError(f"unknown update type {type(delta).__name__}")
    dense = delta.delta.detach().to("cpu", torch.float32) * strength
    if dense_rank <= 0 and dense_energy <= 0:
        up, down = exact_factors(dense)
        return SavedDelta(up, down, "dense", 0.0, float(dense.double().square().sum()))
    u, s, vh = torch.linalg.svd(dense.double(), full_matrices=False)
    rank = truncation_rank(s, dense_rank, dense_energy)
    energy = s.square()
    total = float(energy.sum())
    if rank >= s.numel():  # nothing to cut: keep it exact
        up, down = exact_factors(dense)
        return SavedDelta(up, down, "dense", 0.0, total)
    error = (float(energy[rank:].sum()) / total) ** 0.5 if total > 0 else 0.0
    up = (u[:, :rank] * s[:rank]).to(torch.float32)
    down = vh[:rank].to(torch.float32)
    return SavedDelta(up, down, "dense (truncated)", error, total)


# -- key names --------------------------------------------------------------------------------------
_BLOCK = re.compile(r"^(input_blocks|output_blocks)\.(\d+)\.1\.(.*)$")


def unet_diffusers_names(modules: list[str]) -> dict[str, str] | None:
    """ComfyUI (SGM) UNet module paths -> diffusers module paths, for the attention modules of an edit.

    The block layout (res blocks per level) is read off the edited keys: in the UNet every res block of a
    level with attention has a transformer, so the input blocks with attention come in runs of
    ``res_blocks`` between downsamplers and the output blocks in runs of ``res_blocks + 1``. Returns None
    when no single layout fits (the caller keeps the SGM names).
    """
    inputs_ids, output_ids = set(), set()
    for module in modules:
        match = _BLOCK.match(module)
        if match:
            (inputs_ids if match.group(1) == "input_blocks" else output_ids).add(int(match.group(2)))
        elif not module.startswith("middle_block.1."):
            return None
    layouts = []
    for group in range(2, MAX_LAYOUT_GROUP + 1):  # group = res blocks per level + 1
        in_levels = {(i - 1) // group for i in inputs_ids}
        out_levels = {i // group for i in output_ids}
        if any(i % group == 0 for i in inputs_ids):
            continue
        if {i for level in in_levels for i in range(level * group + 1, level * group + group)} != inputs_ids:
            continue
        if {i for level in out_levels for i in range(level * group, level * group + group)} != output_ids:
            continue
        layouts.append(group)
    if len(layouts) != 1:
        return None
    (group,) = layouts
    names = {}
    for module in modules:
        match = _BLOCK.match(module)
        if match is None:
            names[module] = "mid_block.attentions.0." + module[len("middle_block.1."):]
            continue
        index, rest = int(match.group(2)), match.group(3)
        if match.group(1) == "input_blocks":
            names[module] = f"down_blocks.{(index - 1) // group}.attentions.{(index - 1) % group}.{rest}"
        else:
            names[module] = f"up_blocks.{index // group}.attentions.{index % group}.{rest}"
    return names


def transformer_diffusers_names(family: str, modules: list[str]) -> dict[str, str] | None:
    """ComfyUI module paths -> diffusers module paths by ComfyUI's own table for the family (the text-input maps
    are outside the blocks, so no block count is needed); None if the family has none or a module is not in it."""
    import comfy.utils

    table = DIFFUSERS_TABLES.get(family)
    if table is None:
        return None
    weights = {ldm: diffusers for diffusers, ldm in getattr(comfy.utils, table)({}, output_prefix="").items()
               if isinstance(ldm, str) and ldm.endswith(".weight")}
    if any(f"{module}.weight" not in weights for module in modules):
        return None
    return {module: weights[f"{module}.weight"][: -len(".weight")] for module in modules}


def module_of(key: str) -> str:
    if not key.startswith("diffusion_model.") or not key.endswith(".weight"):
        raise ValueError(f"the edit holds {key!r}, which is not a diffusion-model weight")
    return key[len("diffusion_model."):-len(".weight")]


def lora_tensors(record: EditRecord, saved: dict[str, SavedDelta]) -> tuple[dict[str, torch.Tensor], str]:
    """The file's tensors and a word on the naming used."""
    modules = {key: module_of(key) for key in saved}
    tensors: dict[str, torch.Tensor] = {}
    diffusers_modules = transformer_diffusers_names(record.family, list(modules.values()))
    if record.family in UNET_FAMILIES:
        names, naming = dict(zip(modules.values(), modules.values())), "kohya (SGM block names)"
        if record.family in KOHYA_DIFFUSERS_NAMES:
            diffusers_names = unet_diffusers_names(list(modules.values()))
            if diffusers_names is not None:
                names, naming = diffusers_names, "kohya (diffusers block names)"
        for key, delta in saved.items():
            base = "lora_unet_" + names[modules[key]].replace(".", "_")
            rank = delta.down.shape[0]
            tensors[f"{base}.lora_down.weight"] = delta.down
            tensors[f"{base}.lora_up.weight"] = delta.up
            tensors[f"{base}.alpha"] = torch.tensor(float(rank), dtype=SAVE_DTYPE)
    elif diffusers_modules is not None:
        naming = "diffusers (transformer.<module>.lora_A/lora_B)"
        for key, delta in saved.items():
            base = f"transformer.{diffusers_modules[modules[key]]}"
            tensors[f"{base}.lora_A.weight"] = delta.down
            tensors[f"{base}.lora_B.weight"] = delta.up
    else:
        naming = "PEFT (diffusion_model.<module>.lora_A/lora_B)"
        for key, delta in saved.items():
            base = f"diffusion_model.{modules[key]}"
            tensors[f"{base}.lora_A.weight"] = delta.down
            tensors[f"{base}.lora_B.weight"] = delta.up
    tensors = {name: t.to(SAVE_DTYPE).contiguous().clone() for name, t in tensors.items()}  # no shared storage
    return tensors, naming


# -- file -----------------------------------------------------------------------------------------
def lora_folder() -> str:
    """The first ComfyUI models/loras folder (where LoraLoader looks first)."""
    return os.path.abspath(folder_paths.get_folder_paths(LORA_FOLDER)[0])


def check_prefix(filename_prefix: str) -> None:
    """Raise InputError unless the prefix names a file inside the loras folder."""
    prefix = filename_prefix.strip()
    if not prefix:
        raise InputError("filename_prefix", "write a file name prefix (it is empty)")
    if os.path.isabs(prefix) or prefix.startswith(("/", "\\")) or re.match(r"^[A-Za-z]:", prefix):
        raise InputError("filename_prefix", f"{filename_prefix!r} is an absolute path; give a path inside models/loras")
    parts = re.split(r"[\\/]+", os.path.normpath(prefix))
    if ".." in parts or os.path.normpath(prefix) in (".", ""):
        raise InputError("filename_prefix", f"{filename_prefix!r} leaves the models/loras folder")


def target_path(filename_prefix: str) -> tuple[str, str]:
    """(absolute path, name as LoraLoader lists it) of the next free ``<prefix>_NNNNN_.safetensors``."""
    check_prefix(filename_prefix)
    root = lora_folder()
    try:
        folder, filename, counter, _, _ = folder_paths.get_save_image_path(filename_prefix.strip(), root)
    except Exception as error:  # ComfyUI refuses paths outside the folder with a bare Exception
        raise InputError("filename_prefix", f"{filename_prefix!r} leaves the models/loras folder") from error
    name = f"{filename}_{counter:05}_.safetensors"
    path = os.path.join(folder, name)
    if os.path.commonpath((root, os.path.abspath(path))) != root:
        raise InputError("filename_prefix", f"{filename_prefix!r} leaves the models/loras folder")
    listed = os.path.relpath(os.path.abspath(path), root).replace(os.sep, "/")
    return path, listed


def write_new_file(tensors: dict[str, torch.Tensor], metadata: dict[str, str], path: str) -> None:
    """Write atomically under a temporary name in the same folder; never replace an existing file."""
    if os.path.exists(path):
        raise FileExistsError(f"{path} exists already; UCE Save Edit never overwrites a file")
    folder, name = os.path.split(path)
    tmp = os.path.join(folder, f".{name}.{os.getpid()}.tmp")
    try:
        safetensors.torch.save_file(tensors, tmp, metadata=metadata)
        try:
            os.link(tmp, path)  # fails if the name exists: never clobbers
        except FileExistsError:
            raise FileExistsError(f"{path} exists already; UCE Save Edit never overwrites a file") from None
        except OSError:  # no hard links on this file system
            if os.path.exists(path):
                raise FileExistsError(f"{path} exists already; UCE Save Edit never overwrites a file") from None
            os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.remove(tmp)


def file_metadata(record: EditRecord, saved: dict[str, SavedDelta], naming: str, dense_rank: int,
                  dense_energy: float) -> dict[str, str]:
    ranks = [delta.down.shape[0] for delta in saved.values()]
    metadata = {str(k): str(v) for k, v in dict(record.description).items()}
    title = f"{metadata.get('uce.method', 'UCE edit')} ({record.family})"
    metadata.update({
        "uce.saved_strength": repr(float(record.strength)),
        "uce.saved_strength_note": "the edit's strength is folded into the file: LoRA strength 1.0 reproduces "
        "the UCE node's MODEL",
        "uce.model_class": record.model_class,
        "uce.key_names": naming,
        "uce.dense_rank": str(dense_rank),
        "uce.dense_energy": repr(float(dense_energy)),
        "uce.kinds": json.dumps(kind_counts(saved)),
        "ss_network_module": "networks.lora",
        "ss_network_dim": str(max(ranks)),
        "ss_network_alpha": str(max(ranks)),
        "ss_network_args": json.dumps({"note": "alpha = rank on every key (scale 1)"}),
        "modelspec.sai_model_spec": "1.0.0",
        "modelspec.title": title,
        "modelspec.architecture": f"{ARCHITECTURE.get(record.family, re.sub(r'[^a-z0-9.]+', '-', record.family.lower()))}/lora",
    })
    truncated = [delta for delta in saved.values() if delta.kind == "dense (truncated)"]
    if truncated:
        metadata["uce.truncation_error_max"] = repr(max(d.error for d in truncated))
        metadata["uce.truncation_error_overall"] = repr(overall_error(saved))
    if record.family in BASE_MODEL_VERSION:
        metadata["ss_base_model_version"] = BASE_MODEL_VERSION[record.family]
    return metadata


def kind_counts(saved: dict[str, SavedDelta]) -> dict[str, dict]:
    kinds: dict[str, dict] = {}
    for delta in saved.values():
        entry = kinds.setdefault(delta.kind, {"keys": 0, "ranks": set()})
        entry["keys"] += 1
        entry["ranks"].add(delta.down.shape[0])
    return {kind: {"keys": e["keys"], "ranks": sorted(e["ranks"])} for kind, e in kinds.items()}


def overall_error(saved: dict[str, SavedDelta]) -> float:
    """||ΔW - ΔW_r||_F / ||ΔW||_F over every dense update together (exact ones count with 0 error)."""
    total = sum(delta.energy for delta in saved.values())
    residual = sum(delta.error ** 2 * delta.energy for delta in saved.values())
    return (residual / total) ** 0.5 if total > 0 else 0.0


def size_text(size: int) -> str:
    return f"{size / 2 ** 20:.1f} MiB" if size >= 2 ** 20 else f"{size / 1024:.1f} KiB"


def report_text(listed: str, record: EditRecord, saved: dict[str, SavedDelta], naming: str, size: int) -> str:
    lines = [
        f"UCE Save Edit: {listed}",
        (f"{len(saved)} weights of {record.family} ({record.model_class}), {naming} keys, float32, "
         f"{size_text(size)}; strength {record.strength:g} folded in (load at LoRA strength 1.0)"),
    ]
    for kind, entry in kind_counts(saved).items():
        ranks = entry["ranks"]
        rank = str(ranks[0]) if len(ranks) == 1 else f"{ranks[0]}–{ranks[-1]}"
        lines.append(f"{kind}: {entry['keys']} weights, rank {rank}")
    truncated = [delta.error for delta in saved.values() if delta.kind == "dense (truncated)"]
    if truncated:
        lines.append(f"truncation error ||ΔW - ΔW_r||_F / ||ΔW||_F: max {max(truncated):.3%}, "
                     f"overall {overall_error(saved):.3%}")
    return "\n".join(lines)


def save_edit(record: EditRecord, filename_prefix: str, dense_rank: int = 0, dense_energy: float = 0.0
              ) -> tuple[str, str, str]:
    """Write the edit as a new LoRA file; returns (name as LoraLoader lists it, path, report)."""
    if not isinstance(record, EditRecord):
        raise TypeError("edit: connect the edit output of a UCE node")
    if not record.deltas:
        raise ValueError("edit: the edit changes no weights; there is nothing to save")
    if dense_rank < 0:
        raise InputError("dense_rank", f"must be 0 (exact) or a positive rank, not {dense_rank}")
    if math.isnan(dense_energy) or not 0.0 <= dense_energy <= 1.0:
        raise InputError("dense_energy", f"must be between 0 (off) and 1, not {dense_energy}")
    path, listed = target_path(filename_prefix)
    saved = {key: saved_delta(delta, float(record.strength), dense_rank, dense_energy)
             for key, delta in record.deltas.items()}
    tensors, naming = lora_tensors(record, saved)
    metadata = file_metadata(record, saved, naming, dense_rank, dense_energy)
    write_new_file(tensors, metadata, path)
    return listed, path, report_text(listed, record, saved, naming, os.path.getsize(path))


class UCESaveEdit(io.ComfyNode):
    """Save the edit of a UCE node as a LoRA file in models/loras."""

    @classmethod
    def define_schema(cls):
        return io.Schema(
            node_id="UCESaveEdit",
            display_name="UCE Save Edit",
            category=inputs.CATEGORY,
            description="Save a UCE edit as a small LoRA file in models/loras. Loaded with LoraLoaderModelOnly at "
            "strength 1.0 on the same base model it gives the UCE node's MODEL (its strength is folded in); "
            "it stacks with other LoRAs.",
            inputs=[
                inputs.Edit.Input("edit", tooltip="The edit output of UCE Erase Concepts, UCE Moderate or UCE Debias."),
                io.String.Input(
                    "filename_prefix",
                    default="uce/edit",
                    tooltip="File name in models/loras; a counter is added (uce/edit_00001_.safetensors). "
                    "Subfolders are fine; a path outside models/loras is refused.",
                ),
                io.Int.Input(
                    "dense_rank",
                    default=0,
                    min=0,
                    max=16384,
                    tooltip="0 = save dense updates exactly (full rank). A positive rank keeps only that many "
                    "singular values of each dense update (smaller file; the report gives the error). Low-rank "
                    "updates are always saved exactly.",
                ),
                io.Float.Input(
                    "dense_energy",
                    default=0.0,
                    min=0.0,
                    max=1.0,
                    step=0.001,
                    tooltip="0 = off. Else keep the fewest singular values of each dense update whose energy "
                    "(sum of squares) reaches this fraction, e.g. 0.999; with dense_rank too, the smaller rank wins.",
                ),
            ],
            outputs=[io.String.Output("lora_name", display_name="lora_name",
                                      tooltip="The file name as LoraLoaderModelOnly lists it.")],
            is_output_node=True,
        )

    @classmethod
    def check_values(cls, values: dict) -> None:
        """Raise InputError (naming the input) for the first widget value the node cannot use."""
        input_checks.check_inputs(cls.INPUT_TYPES(), values)
        if values.get("filename_prefix") is not None:
            check_prefix(values["filename_prefix"])

    @classmethod
    def validate_inputs(cls, **values):
        """ComfyUI's validation of a queued prompt: a bad value is an HTTP 400 naming the node and the input."""
        return input_checks.validation_answer(cls.check_values, values)

    @classmethod
    def execute(cls, edit, filename_prefix: str, dense_rank: int = 0, dense_energy: float = 0.0) -> io.NodeOutput:
        cls.check_values({"filename_prefix": filename_prefix, "dense_rank": dense_rank, "dense_energy": dense_energy})
        listed, _, text = save_edit(edit, filename_prefix, int(dense_rank), float(dense_energy))
        return io.NodeOutput(listed, ui=ui.PreviewText(text))
