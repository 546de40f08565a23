"""Progress of a long edit: ComfyUI's progress bar, a line of text on the node with the time left, and
an interrupt check at every step (tokenizing, encoding, solving)."""

from __future__ import annotations

import logging
import sys
import time
from typing import Callable, Optional

import comfy.model_management
import comfy.utils

TEXT_EVERY_SECONDS = 0.5

log = logging.getLogger("comfyui-uce")


class EditProgress:
    """One progress bar over the phases of an edit; ``phase`` gives each phase its callback."""

    def __init__(self, total: int):
        self.bar = comfy.utils.ProgressBar(max(total, 1))
        self.node_id = _executing_node()
        self._last_text = 0.0

    def phase(self, offset: Optional[int], what: Optional[str] = None) -> Callable[[int, int], None]:
        """``callback(done, total)`` for a phase that starts at step ``offset`` (None: a phase outside the
        bar's steps, which leaves the bar where it is); it raises if the user interrupted. With ``what``
        (e.g. "encoding preserve prompts") it also shows the count and time left."""
        started = time.perf_counter()

        def report(done: int, total: int) -> None:
            comfy.model_management.throw_exception_if_processing_interrupted()
            if offset is not None:
                self.bar.update_absolute(offset + done)
            if what is None or done == 0:
                return
            now = time.perf_counter()
            if done < total and now - self._last_text < TEXT_EVERY_SECONDS:
                return
            self._last_text = now
            left = (now - started) / done * (total - done)
            self.say(f"{what}: {done:,} of {total:,}" + (f", about {duration(left)} left" if done < total else ""))

        return report

    def say(self, text: str) -> None:
        """A line of text on the node in the editor (and in the log)."""
        log.info("UCE: %s", text)
        server = sys.modules.get("server")  # ComfyUI's server module, when this runs inside ComfyUI
        instance = getattr(getattr(server, "PromptServer", None), "instance", None)
        if instance is not None and self.node_id is not None:
            instance.send_progress_text(text, self.node_id)


def duration(seconds: float) -> str:
    """A short human reading of a duration: 42 s, 3 min 10 s, 2 h 05 min."""
    seconds = max(0, round(seconds))
    if seconds < 60:
        return f"{seconds} s"
    if seconds < 3600:
        return f"{seconds // 60} min {seconds % 60:02d} s"
    return f"{seconds // 3600} h {seconds % 3600 // 60:02d} min"


def _executing_node() -> Optional[str]:
    try:
        from comfy_execution.utils import get_executing_context
    except ImportError:
        return None
    context = get_executing_context()
    return None if context is None else context.node_id
