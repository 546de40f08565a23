"""UCE Debias: move professions' outputs toward a chosen mix of attributes (gender, race …)."""

from __future__ import annotations

from comfy_api.latest import io

from . import inputs, presets
from .edit_runner import DebiasPlan, EditSettings
from .input_checks import InputError
from .node_base import UCENode


def debias_texts(professions: str, attributes: str, attribute_weights: str):
    """Professions, attributes and one weight row per profession from the text inputs; InputError if malformed."""
    profession_list = presets.lines(professions)
    if not profession_list:
        raise InputError("professions", "write at least one profession to debias, one per line (it is empty)")
    attribute_list = presets.lines(attributes)
    if len(attribute_list) < 2:
        raise InputError("attributes", "write at least two attributes, one per line (e.g. male and female)")
    weight_lines = presets.one_or_each(
        presets.lines(attribute_weights), len(profession_list), "attribute_weights", "professions"
    )
    weights = [presets.parse_numbers(line, "attribute_weights") for line in weight_lines]
    for row in weights:
        if len(row) != len(attribute_list):
            raise InputError(
                "attribute_weights",
                f"needs one number per attribute ({len(attribute_list)}: {', '.join(attribute_list)}), "
                f"got {len(row)} in {row}",
            )
    return profession_list, attribute_list, weights


def debias_request(
    professions: str,
    attributes: str,
    attribute_weights: str,
    use_templates: bool = True,
    preserve: str = "",
    **solver_values,
) -> tuple[DebiasPlan, EditSettings]:
    """Turn the node's widget values into a debias plan; raises ValueError on bad input.

    ``solver_values``: the common solver widgets (see ``EditSettings.from_widgets``).
    """
    profession_list, attribute_list, weights = debias_texts(professions, attributes, attribute_weights)
    templates = presets.DEBIAS_TEMPLATES if use_templates else ("{}",)
    items, item_weights, origins = [], [], {}
    for profession, row in zip(profession_list, weights):
        for template in templates:
            items.append((template.format(profession), [template.format(a) for a in attribute_list]))
            item_weights.append(row)
            for text in (profession, *attribute_list):
                if template != "{}":
                    origins[template.format(text)] = (
                        f"the template {template!r} made it from {text!r}: shorten it or turn use_templates off"
                    )

    settings = EditSettings.from_widgets(
        presets.lines(preserve) or list(presets.shipped_list("professions.txt")),
        profession_list,
        lambda count: 0.1,  # the paper's value for debiasing
        **solver_values,
    )
    return DebiasPlan(items, item_weights, origins=origins), settings


class UCEDebias(UCENode):
    """Debias professions across attributes with the UCE closed form and given attribute weights."""

    @classmethod
    def define_schema(cls):
        return io.Schema(
            node_id="UCEDebias",
            display_name="UCE Debias",
            category=inputs.CATEGORY,
            description="Unified Concept Editing for debiasing: for each profession prompt, the cross-attention "
            "keys/values are edited so its outputs move toward the attribute prompts (v* = o + sum_a w_a |o| u_a), "
            "while other professions stay unchanged. Weights are given, not calibrated. Outputs a patched model, a "
            "report and the edit.",
            inputs=[
                inputs.model_input(),
                inputs.clip_input(),
                inputs.text_input("professions", "doctor", "Professions (or any subjects) to debias, one per line."),
                inputs.text_input(
                    "attributes",
                    "male\nfemale",
                    "Attributes to balance across, one per line (e.g. male / female, or race groups).",
                ),
                inputs.text_input(
                    "attribute_weights",
                    "-0.03, 0.03",
                    "One number per attribute, in the attributes' order: positive pushes toward that attribute, "
                    "negative away. One line for all professions or one line per profession. The paper's "
                    "calibration uses 0.1 x (desired share - observed share), e.g. a profession shown 80% male: "
                    "-0.03, 0.03.",
                ),
                io.Boolean.Input(
                    "use_templates",
                    default=True,
                    tooltip="Edit the paper's five prompts per profession ('image of X', 'photo of X', "
                    "'portrait of X', 'picture of X', 'X') instead of the bare profession only.",
                ),
                inputs.text_input(
                    "preserve",
                    "",
                    "Prompts that must not change, one per line. Empty = a built-in list of professions (minus the "
                    "debiased ones). The unconditional prompt is always preserved.",
                ),
                *inputs.common_solver_inputs(
                    1.0, 0.1, "Weight s_p of keeping the preserve prompts unchanged (paper: 0.1). -1 = automatic (0.1)."
                ),
                *inputs.optional_inputs(),
            ],
            outputs=inputs.outputs(),
        )

    build_request = staticmethod(debias_request)
    check_texts = staticmethod(debias_texts)
