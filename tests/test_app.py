import gradio as gr

from app import parse_args
from ui.app import TITLE, build_app


def test_app_builds_a_gradio_page():
    demo = build_app()
    assert isinstance(demo, gr.Blocks)
    assert demo.title == TITLE


def test_command_line_defaults():
    args = parse_args([])
    assert args.port == 7860 and not args.share
