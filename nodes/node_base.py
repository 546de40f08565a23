"""What every UCE node shares: category, outputs, and one path from widget values to the edit."""

from __future__ import annotations

from . import inputs
from .edit_runner import run_edit


class UCENode:
    """Base of the UCE nodes. A subclass declares INPUT_TYPES, DESCRIPTION, ``build_request``
    (widget values -> (plan, settings), raising ValueError on bad input) and VALIDATE_INPUTS.

    VALIDATE_INPUTS names only the text inputs it parses, so ComfyUI still checks
    every other input's range and choices itself (it skips those it passes to
    VALIDATE_INPUTS).
    """

    CATEGORY = inputs.CATEGORY
    FUNCTION = "edit"
    RETURN_TYPES = inputs.OUTPUTS
    RETURN_NAMES = inputs.OUTPUT_NAMES
    OUTPUT_TOOLTIPS = inputs.OUTPUT_TOOLTIPS

    build_request = None

    def edit(self, model, clip, **values):
        plan, settings = self.build_request(**values)
        edited, report = run_edit(model, clip, plan, settings)
        return edited, report.text()
