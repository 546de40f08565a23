"""What every UCE node shares (ComfyUI V3 schema): category, outputs, input checks, and one path from
widget values to the edit."""

from __future__ import annotations

import inspect

from comfy_api.latest import io, ui

from . import input_checks
from .edit_runner import run_edit


class UCENode(io.ComfyNode):
    """Base of the UCE nodes. A subclass declares ``define_schema`` (see ``schema``), ``build_request``
    (widget values -> (plan, settings), raising ValueError on bad input) and ``check_texts`` (the part
    of it that parses the text inputs, run when ComfyUI validates a queued prompt).

    ``validate_inputs`` takes every widget value, so ComfyUI leaves their range checks to
    ``input_checks`` (which also refuses NaN and infinite numbers, and checks choices: ComfyUI
    0.3.75 does not check a V3 combo's options itself).
    """

    build_request = None
    check_texts = None

    @classmethod
    def check_values(cls, values: dict) -> None:
        """Raise InputError (naming the input) for the first widget value the node cannot use."""
        input_checks.check_inputs(cls.INPUT_TYPES(), values)
        parameters = inspect.signature(cls.check_texts).parameters
        texts = {name: value for name, value in values.items() if name in parameters}
        if all(value is not None for value in texts.values()):  # linked texts are checked when the node runs
            cls.check_texts(**texts)

    @classmethod
    def validation(cls, **values):
        """The answer to ComfyUI's validation: True, or the message /prompt answers with (HTTP 400)."""
        return input_checks.validation_answer(cls.check_values, values)

    @classmethod
    def validate_inputs(cls, **values):
        return cls.validation(**values)

    @classmethod
    def execute(cls, model, clip, **values) -> io.NodeOutput:
        cls.check_values(values)
        plan, settings = cls.build_request(**values)
        edited, report, record = run_edit(model, clip, plan, settings)
        text = report.text()
        return io.NodeOutput(edited, text, record, ui=ui.PreviewText(text))
