import gradio as gr
import pytest

from app import DEFAULT_BUNDLE, main, parse_args
from tests.test_ui_handlers import explorer_and_pages
from ui.app import TITLE, build_app


def test_app_builds_a_gradio_page():
    demo = build_app(*explorer_and_pages())
    assert isinstance(demo, gr.Blocks)
    assert demo.title == TITLE


def test_command_line_defaults(monkeypatch):
    for name in ("SAE_BUNDLE", "SAE_MODEL", "SAE_DEVICE"):
        monkeypatch.delenv(name, raising=False)
    args = parse_args([])
    assert args.bundle == DEFAULT_BUNDLE == "checkpoints/shapes-bundle"
    assert args.model is None and args.device is None and args.port == 7860 and not args.share


def test_a_space_sets_the_options_as_variables_and_flags_still_win(monkeypatch):
    monkeypatch.setenv("SAE_BUNDLE", "user/sd15-up_ft1")
    monkeypatch.setenv("SAE_MODEL", "/models/sd15")
    monkeypatch.setenv("SAE_DEVICE", "cuda")
    args = parse_args([])
    assert (args.bundle, args.model, args.device) == ("user/sd15-up_ft1", "/models/sd15", "cuda")
    assert parse_args(["--bundle", "here", "--device", "cpu"]).bundle == "here"


def test_a_missing_bundle_stops_the_app_with_a_clear_message(tmp_path):
    with pytest.raises(SystemExit, match="Cannot open bundle: No bundle directory"):
        main(["--bundle", str(tmp_path / "missing")])
