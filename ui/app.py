"""The Gradio app. For now one page that says what the explorer will show and what it has loaded."""

import gradio as gr

TITLE = "Temporal SAE Explorer"
INTRO = """Sparse, interpretable features of a diffusion model's activations *over the denoising trajectory*.
The browser, heatmaps over time and live steering arrive with the UI; the backend (trajectory capture,
linear dynamics, residualized TopK SAE, bundles) is in `backend/`."""


def build_app() -> gr.Blocks:
    """Lay out the app; handlers live in plain functions."""
    with gr.Blocks(title=TITLE) as demo:
        gr.Markdown(f"# {TITLE}\n\n{INTRO}")
    return demo
