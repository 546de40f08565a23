"""What every UCE node shares: category, outputs, input checks, and one path from widget values to the edit."""

from __future__ import annotations

import inspect

from . import input_checks, inputs
from .edit_runner import run_edit


class UCENode:
    """Base of the UCE nodes. A subclass declares INPUT_TYPES, DESCRIPTION, ``build_request``
    (widget values -> (plan, settings), raising ValueError on bad input), ``check_texts`` (the
    part of it that parses the text inputs) and VALIDATE_INPUTS, which names the text and number
    inputs and returns ``cls.validation(...)`` of them.

    ComfyUI skips its own range check for the inputs VALIDATE_INPUTS names;
    ``input_checks`` does it instead, and also refuses NaN and infinite numbers,
    which that check lets through. Choices and booleans are left to ComfyUI.
    """

    CATEGORY = inputs.CATEGORY
    FUNCTION = "edit"
    RETURN_TYPES = inputs.OUTPUTS
    RETURN_NAMES = inputs.OUTPUT_NAMES
    OUTPUT_TOOLTIPS = inputs.OUTPUT_TOOLTIPS

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
        """VALIDATE_INPUTS answer: True, or the message ComfyUI answers /prompt with (HTTP 400)."""
        try:
            cls.check_values(values)
        except ValueError as error:
            return str(error)
        return True

    def edit(self, model, clip, **values):
        self.check_values(values)
        plan, settings = self.build_request(**values)
        edited, report = run_edit(model, clip, plan, settings)
        return edited, report.text()
