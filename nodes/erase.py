"""UCE Erase Concepts and UCE Moderate: send concepts toward a guide (or the unconditional prompt)."""

from __future__ import annotations

from comfy_api.latest import io

from .. import uce_solver
from . import caption_prior, inputs, presets
from .edit_runner import EditSettings, ErasePlan
from .input_checks import InputError
from .node_base import UCENode

NUDITY_WORDS = ("nud", "naked", "nsfw")
PRESERVE_SCALE_TOOLTIP = (
    "Weight s_p of keeping the preserve prompts' outputs unchanged. -1 = automatic, as the paper: "
    "max(0.1, 1 / number of preserve prompts)."
)


def erase_texts(concepts: str, guide: str = "") -> tuple[list[str], list[str]]:
    """Concepts and one guide per concept from the two text inputs; raises ValueError on bad input."""
    concept_list = presets.lines(concepts)
    if not concept_list:
        raise InputError("concepts", "write at least one concept, one per line (it is empty)")
    return concept_list, presets.one_or_each(presets.guide_lines(guide), len(concept_list), "guide", "concepts")


def erase_request(
    concepts: str,
    guide: str,
    preserve: str,
    concept_type: str = "custom",
    expand_prompts: bool = False,
    label: str = "erase",
    preserve_preset: str = "none",
    harden_rounds: int = 0,
    harden_lamb: float = -1.0,
    **solver_values,
) -> tuple[ErasePlan, EditSettings]:
    """Turn the node's widget values into an erase plan; raises ValueError on bad input.

    ``solver_values``: the common solver widgets (see ``EditSettings.from_widgets``).
    """
    concept_list, guides = erase_texts(concepts, guide)
    if concept_type not in presets.CONCEPT_TYPES:
        raise ValueError(f"unknown concept type {concept_type!r}; expected one of {', '.join(presets.CONCEPT_TYPES)}")
    preset = presets.CONCEPT_TYPES[concept_type]
    templates = preset.templates if expand_prompts else ()
    pairs = [(prompt, g) for concept, g in zip(concept_list, guides) for prompt in presets.expand(concept, templates)]
    origins = {
        template.format(concept): f"the {concept_type} template {template!r} made it from the concept {concept!r}: "
        "shorten the concept or turn expand_prompts off"
        for concept in concept_list
        for template in templates
    }

    preserve_list = presets.lines(preserve)
    if not preserve_list and preset.preserve_list:
        preserve_list = list(presets.shipped_list(preset.preserve_list))
    if preserve_preset not in inputs.PRESERVE_PRESETS:
        raise InputError("preserve_preset", f"unknown preset {preserve_preset!r}; expected one of "
                         f"{', '.join(inputs.PRESERVE_PRESETS)}")
    if preserve_preset == "captions":
        preserve_list += list(caption_prior.caption_prompts())
    settings = EditSettings.from_widgets(
        preserve_list,
        concept_list,
        lambda count: max(0.1, 1 / count),  # the paper's automatic preserve scale
        hardening=hardening(label, concept_list, harden_rounds, harden_lamb),
        **solver_values,
    )
    return ErasePlan(pairs, label=label, origins=origins), settings


def hardening(label: str, concepts: list[str], rounds: int, lamb: float) -> uce_solver.Hardening:
    """The hardening settings, -1 meaning RECE's defaults: nudity 3 rounds with lambda_adv 0.1, other
    moderated concepts 2 rounds, erased artists and objects 1 round, lambda_adv 0.001."""
    nudity = label == "moderate" and any(word in c.lower() for c in concepts for word in NUDITY_WORDS)
    if rounds < 0:
        rounds = 3 if nudity else 2 if label == "moderate" else 1
    if lamb < 0:
        lamb = 0.1 if nudity else 1e-3
    if rounds and not lamb > 0:
        raise InputError("harden_lamb", f"must be above 0 (or -1 for RECE's default), got {lamb}")
    return uce_solver.Hardening(rounds, lamb)


def moderate_request(concepts: str, preserve: str, **solver_values) -> tuple[ErasePlan, EditSettings]:
    """Moderation is erasing toward the unconditional prompt, preserving it (plus any listed prompts)."""
    return erase_request(concepts, guide="", preserve=preserve, label="moderate", **solver_values)


class UCEEraseConcepts(UCENode):
    """Erase concepts (artists' styles, objects, anything) by a closed-form edit of cross-attention K/V."""

    @classmethod
    def define_schema(cls):
        concept_type = io.Combo.Input(
            "concept_type",
            options=list(presets.CONCEPT_TYPES),
            default="art",
            tooltip="Sets the paper's defaults. art: art prompt templates, built-in list of artists to preserve, "
            "guide 'art'. object: object templates, guide '' (unconditional). custom: no templates, preserve only "
            "what you list. In the editor, choosing a type also fills in its guide; the guide field is what the "
            "edit uses (set it yourself in API prompts).",
        )
        concept_type.extra_dict = {"uce_guides": {name: t.guide for name, t in presets.CONCEPT_TYPES.items()}}
        return io.Schema(
            node_id="UCEEraseConcepts",
            display_name="UCE Erase Concepts",
            category=inputs.CATEGORY,
            description="Unified Concept Editing (Gandikota et al., WACV 2024): erase concepts from the model by a "
            "training-free, closed-form edit of every cross-attention key/value projection, mapping each concept "
            "onto a guide concept while keeping the preserve prompts unchanged. Outputs a patched copy of the "
            "model, a report and the edit.",
            inputs=[
                inputs.model_input(),
                inputs.clip_input(),
                inputs.text_input("concepts", "Van Gogh", "Concepts to erase, one per line (e.g. artist names, objects)."),
                concept_type,
                inputs.text_input(
                    "guide",
                    "art",
                    "What each concept should turn into: one line for all concepts, or one line per concept. Empty = "
                    "the unconditional prompt (as if the concept were not written).",
                ),
                inputs.text_input(
                    "preserve",
                    "",
                    "Prompts whose outputs must not change, one per line. Empty = the concept type's default (art: "
                    "a built-in list of well-known artists). The unconditional prompt is always preserved; erased "
                    "concepts are removed from this list.",
                ),
                io.Boolean.Input(
                    "expand_prompts",
                    default=True,
                    tooltip="Also erase the concept type's template prompts (art: 'painting by X', 'art by X' "
                    "…; object: 'image of X', 'photo of X' …), each sent to the same guide.",
                ),
                *inputs.common_solver_inputs(1.0, -1.0, PRESERVE_SCALE_TOOLTIP),
                *inputs.optional_inputs(),
                *inputs.robust_erase_inputs(),
            ],
            outputs=inputs.outputs(),
        )

    build_request = staticmethod(erase_request)
    check_texts = staticmethod(erase_texts)


class UCEModerate(UCENode):
    """Moderate unsafe concepts: erase them toward the unconditional prompt, preserving the unconditional prompt."""

    @classmethod
    def define_schema(cls):
        return io.Schema(
            node_id="UCEModerate",
            display_name="UCE Moderate",
            category=inputs.CATEGORY,
            description="Unified Concept Editing for moderation: sends unsafe concepts (default 'nudity') to the "
            "unconditional prompt with a closed-form edit of cross-attention keys/values, keeping the unconditional "
            "prompt itself (and any prompts you add) unchanged. Outputs a patched copy of the model, a report and "
            "the edit.",
            inputs=[
                inputs.model_input(),
                inputs.clip_input(),
                inputs.text_input("concepts", "nudity", "Unsafe concepts to remove, one per line."),
                inputs.text_input(
                    "preserve",
                    "",
                    "Extra prompts whose outputs must not change, one per line. The unconditional prompt is always "
                    "preserved (the paper preserves only that).",
                ),
                *inputs.common_solver_inputs(
                    1.0,
                    1.0,
                    "Weight s_p of keeping the preserve prompts unchanged (paper: 1). -1 = automatic: "
                    "max(0.1, 1 / number of preserve prompts).",
                ),
                *inputs.optional_inputs(),
                *inputs.robust_erase_inputs(),
            ],
            outputs=inputs.outputs(),
        )

    build_request = staticmethod(moderate_request)
    check_texts = staticmethod(erase_texts)
