"""What the page says about the model while it loads in the background: the notice and the generation buttons."""

from ui.explorer import Explorer

LOADING_LABEL = "Model loading…"
BUTTONS = ("Generate", "Find its latents", "Generate and find its latents", "Find", "Edit")  # steer, inspect an upload, inspect a prompt, find, edit


def notice_text(ex: Explorer) -> str:
    """The notice line shown on every tab (empty when generation works normally)."""
    return f"⚠️ {ex.notice}" if ex.notice else ""


def button_label(ex: Explorer, ready_label: str) -> str:
    """A generation button's label: `ready_label`, or that the model is still loading."""
    return LOADING_LABEL if ex.model_state == "loading" else ready_label
