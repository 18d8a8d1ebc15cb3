"""Gradio layout and handlers; calls `backend`, never torch directly."""
