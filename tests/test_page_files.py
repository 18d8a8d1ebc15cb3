"""Latent pages as files (ui/page_files.py): drawn once, served as written, identical to pages drawn on demand."""

import json
from pathlib import Path

import gradio as gr
import numpy as np
import pytest
from gradio.utils import is_static_file
from PIL import Image

from backend.errors import ExplorerError
from backend.serving.recent import Recent
from tests.test_ui_handlers import ex  # noqa: F401  (the module's explorer fixture)
from ui import browse, page_files, views
from ui.page_files import PREDRAW_ENV, PageFiles, draw_all, pages_key, predraw, served_page


def page_bytes(files: PageFiles, j: int) -> tuple[bytes, list[bytes]]:
    """Page j's JSON file and its pictures' files, as bytes."""
    page = files.read(j)
    pictures = [Path(path).read_bytes() for name in page_files.GALLERIES for path, _ in getattr(page, name)]
    return files.path(j).read_bytes(), pictures


def fresh_pages(ex, files: PageFiles, j):
    """Page j served by an explorer with nothing in memory."""
    kept, ex.pages = ex.pages, Recent(4)
    try:
        return served_page(ex, j, files)
    finally:
        ex.pages = kept


def test_pages_drawn_ahead_are_byte_identical_to_pages_drawn_on_demand(ex, tmp_path):
    ahead, on_demand = PageFiles(tmp_path / "ahead"), PageFiles(tmp_path / "on-demand")
    assert draw_all(ex, ahead, progress=False) == ex.bundle.n_latents and not ahead.missing(views.default_order(ex))
    for j in (0, 5, views.default_latent(ex)):
        served = fresh_pages(ex, on_demand, j)
        assert served.latent == j and page_bytes(ahead, j) == page_bytes(on_demand, j)


def test_a_page_file_shows_the_drawn_page(ex, tmp_path):
    """Pixels, captions, text and figures as Gradio sends them: the same as the page drawn in memory."""
    files, j = PageFiles(tmp_path), 3
    drawn, served = browse.latent_page(ex, j), fresh_pages(ex, files, j)
    assert (served.header, served.icon_note, served.similar) == (drawn.header, drawn.icon_note, drawn.similar)
    for name in page_files.GALLERIES:
        pictures, paths = getattr(drawn, name), getattr(served, name)
        assert [caption for _, caption in pictures] == [caption for _, caption in paths]
        for (image, _), (path, _) in zip(pictures, paths):
            assert Path(path).parent == files.images.root and is_static_file(path)
            assert np.array_equal(np.asarray(Image.open(path).convert("RGB")), np.asarray(image.convert("RGB")))
    for name in page_files.FIGURES:
        assert gr.Plot().postprocess(getattr(served, name)) == gr.Plot().postprocess(getattr(drawn, name))


def test_a_written_page_is_read_not_drawn_again(ex, tmp_path, monkeypatch):
    files = PageFiles(tmp_path)
    first = fresh_pages(ex, files, 2)
    monkeypatch.setattr(page_files, "latent_page", lambda *a: pytest.fail("the page was drawn again"))
    again = fresh_pages(ex, files, "2")
    assert again.top_images == first.top_images and again.header == first.header


def test_a_bad_latent_id_writes_nothing(ex, tmp_path):
    files = PageFiles(tmp_path)
    for bad in (-1, ex.bundle.n_latents, "x", float("nan")):
        with pytest.raises(ExplorerError):
            served_page(ex, bad, files)
    assert not list(tmp_path.glob("*.json"))


def test_a_page_without_its_file_is_missing_and_drawn_again(ex, tmp_path):
    """A page is complete once its JSON is there (written last): a killed drawing resumes from the pages without one."""
    files = PageFiles(tmp_path)
    draw_all(ex, files, progress=False)
    files.path(4).unlink()
    assert files.missing(views.default_order(ex)) == [4] and draw_all(ex, files, progress=False) == 1
    assert json.loads(files.path(4).read_text())["latent"] == 4


def test_the_folder_changes_with_the_bundle_files_and_the_code(tmp_path):
    files = {"sae/sae.safetensors": "a" * 64, "atlas/tables.safetensors": "b" * 64}
    assert pages_key(files) == pages_key(dict(reversed(files.items())))
    assert pages_key(files) != pages_key(files | {"atlas/tables.safetensors": "c" * 64})
    source = tmp_path / "backend" / "method" / "encodings.py"  # drawn into the profile figure, two folders down
    source.parent.mkdir(parents=True)
    source.write_text("SCALE = 1\n")
    before = pages_key(files, tmp_path)
    source.write_text("SCALE = 2\n")
    assert pages_key(files, tmp_path) != before


def test_a_cache_that_cannot_be_written_falls_back_to_a_temporary_folder(ex, tmp_path):
    blocked = tmp_path / "file"
    blocked.write_text("not a folder")
    files = PageFiles.of(ex.bundle, blocked)
    assert not files.root.is_relative_to(blocked) and files.images.root.is_dir()


def test_the_app_draws_the_pages_in_a_child_process(ex, tmp_path, monkeypatch):
    files = PageFiles(tmp_path)
    monkeypatch.setenv(PREDRAW_ENV, "0")
    assert predraw(ex, files) is None
    monkeypatch.delenv(PREDRAW_ENV)
    process = predraw(ex, files)
    process.join(timeout=300)
    assert process.exitcode == 0 and not files.missing(views.default_order(ex))
    assert predraw(ex, files) is None  # all drawn: nothing to start
    on_demand = PageFiles(tmp_path / "on-demand")
    fresh_pages(ex, on_demand, 1)
    assert page_bytes(files, 1) == page_bytes(on_demand, 1)


def test_the_command_draws_every_page(tmp_path, capsys):
    from tests.test_ui_handlers import ui_bundle_dir
    page_files.main(["--bundle", str(ui_bundle_dir()), "--cache", str(tmp_path)])
    assert capsys.readouterr().out.startswith("32 pages drawn")
    (folder,) = tmp_path.iterdir()
    assert len(list(folder.glob("*.json"))) == 32
