"""What the page says about the model: the notice and the generation buttons while it loads, and a generation's progress."""

import contextvars
from typing import Callable

import gradio as gr

from backend.serving.progress import Status
from ui.explorer import Explorer

LOADING_LABEL = "Model loading…"
# steer, inspect an upload, inspect a prompt, find, edit (Steer tab), edit an upload, steer an upload
BUTTONS = ("Generate", "Reconstruct and find its latents", "Generate and find its latents", "Find", "Edit", "Edit your image",
           "Steer your image")


def notice_text(ex: Explorer) -> str:
    """The notice line shown on every tab (empty when generation works normally)."""
    return f"⚠️ {ex.notice}" if ex.notice else ""


def button_label(ex: Explorer, ready_label: str) -> str:
    """A generation button's label: `ready_label`, or that the model is still loading."""
    return LOADING_LABEL if ex.model_state == "loading" else ready_label


def progressed(call: Callable) -> Callable:
    """`call(*args, on_progress=…)` with what its sampling runs report (place in line, step, time left) shown in the
    event's progress bar. The reports come from another thread, so they are sent in this event's context."""
    def run(*args):
        context, bar = contextvars.copy_context(), gr.Progress()

        def show(status: Status) -> None:
            context.run(bar, (status.step, status.steps), desc=status.text())
        return call(*args, on_progress=show)
    return run
