"""What the page says about the model while it loads in the background: the notice and the generation buttons."""

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
