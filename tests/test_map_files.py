"""Maps over time as files (ui/map_files.py): drawn once by the model, read back without it, drawn ahead while idle."""

import functools
import threading
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from backend.errors import ExplorerError
from backend.serving.recent import Recent
from tests.test_ui_handlers import labelled_latent, one_thread, tiny_explorer
from gradio_client import Client

from tests.ports import free_port
from ui import browse, map_files, timeline, views
from ui.app import LAUNCH, build_app
from ui.map_files import Activity, MapFiles, draw_maps, draw_when_idle
from ui.page_files import PageFiles


@pytest.fixture()
def ex(tmp_path):
    with one_thread():
        explorer = tiny_explorer()
        explorer.maps = MapFiles(tmp_path / "maps")
        yield explorer


def pixels(picture) -> np.ndarray:
    return np.asarray(Image.open(picture).convert("RGB") if isinstance(picture, str) else picture.convert("RGB"))


def test_a_map_is_written_once_and_read_back_without_the_model(ex, monkeypatch):
    j = labelled_latent(ex)
    drawn = browse.latent_timeline(ex, j)  # the frames as pictures, in memory
    line, last, x0, final, caption = browse.timeline_view(ex, j)
    assert ex.maps.path(j).is_file() and line == ex.maps.read(j)
    for (x0_picture, final_picture), (x0_file, final_file) in zip(drawn.frames, line.frames):
        assert Path(x0_file).parent == ex.maps.images.root
        assert np.array_equal(pixels(x0_file), pixels(x0_picture)) and np.array_equal(pixels(final_file), pixels(final_picture))
    monkeypatch.setattr(ex.bundle.generator, "base", lambda *a, **k: pytest.fail("the model was called again"))
    ex.timelines = Recent(4)  # nothing in memory either
    assert browse.drawn_timeline_view(ex, str(j)) == (line, last, x0, final, caption) == browse.timeline_view(ex, j)
    assert timeline.frame(line, 0)[0] == line.frames[0][0]


def test_a_map_not_drawn_yet_is_none_here_and_a_bad_id_a_message(ex):
    j = labelled_latent(ex)
    assert browse.drawn_timeline_view(ex, j) is None and not ex.maps.path(j).exists()
    for bad in (-1, ex.bundle.n_latents, "x"):
        with pytest.raises(ExplorerError):
            browse.drawn_timeline_view(ex, bad)
    ex.maps = None  # maps not kept (another model): nothing is read or written, the map is still drawn
    assert browse.drawn_timeline_view(ex, j) is None
    line = browse.timeline_view(ex, j)[0]
    assert Path(line.frames[0][0]).parent == ex.pictures.root


def test_maps_are_kept_for_the_bundles_own_model_only(ex, tmp_path):
    recorded = ex.bundle.manifest["model"]
    try:
        ex.bundle.manifest["model"] = dict(recorded, files={"unet.safetensors": "1" * 64})
        own = MapFiles.of(tmp_path, ex.bundle, None)
        assert own.root.parent == tmp_path and own.root.name.startswith("maps-")
        assert MapFiles.of(tmp_path, ex.bundle, "some/other-model") is None
        ex.bundle.manifest["model"] = dict(recorded, files={"unet.safetensors": "0" * 64})  # the bundle records other weights
        assert MapFiles.of(tmp_path, ex.bundle, None).root != own.root
        ex.bundle.manifest["model"] = dict(recorded, files={})  # no digests: the weights loaded could be any
        assert MapFiles.of(tmp_path, ex.bundle, None) is None
    finally:
        ex.bundle.manifest["model"] = recorded


def test_a_map_that_lost_a_frame_file_is_drawn_again(ex):
    j = labelled_latent(ex)
    line = browse.timeline_view(ex, j)[0]
    Path(line.frames[1][1]).unlink()
    assert ex.maps.read(j) is None and browse.drawn_timeline_view(ex, j) is None
    assert ex.maps.missing([j]) == []  # its JSON is there: drawing ahead leaves it, a visitor's request draws it again
    again = browse.timeline_view(ex, j)[0]
    assert again == line and Path(line.frames[1][1]).is_file()


def test_drawing_ahead_writes_every_missing_map_keeps_no_base_run_and_resumes(ex):
    order = views.default_order(ex)
    draw = functools.partial(browse.draw_map, ex)
    local = [j for j in order[:6] if ex.table.kinds[j] != "global"]
    kept = len(ex.bundle.generator.base_runs)
    assert draw_maps(ex.maps, draw, order[:6]) == len(local) and ex.maps.missing(order[:6]) == [j for j in order[:6] if j not in local]
    assert len(ex.bundle.generator.base_runs) == kept  # visitors' base runs are not pushed out
    drawn = ex.maps.read(local[0])
    ex.maps.path(local[0]).unlink()
    assert draw_maps(ex.maps, draw, [local[0]]) == 1 and ex.maps.read(local[0]) == drawn  # the same frames, the same files
    assert browse.drawn_timeline_view(ex, local[0])[0] == drawn


def test_drawing_ahead_waits_while_visitors_are_served_and_stops_when_asked(ex, monkeypatch):
    monkeypatch.setattr(map_files, "IDLE_SECONDS", 0.2)
    activity, started, stop = Activity(), threading.Event(), threading.Event()
    drawn = []
    monkeypatch.setenv(map_files.PREDRAW_ENV, "0")
    assert draw_when_idle(ex.maps, drawn.append, [1, 2], activity, stop) is None
    monkeypatch.delenv(map_files.PREDRAW_ENV)
    with activity:  # a visitor's request is running
        thread = draw_when_idle(ex.maps, lambda j: started.set() or drawn.append(j), [1, 2], activity, stop)
        assert not started.wait(0.6) and not activity.idle()
    assert not activity.idle()  # a request just ended
    thread.join(timeout=10)
    assert sorted(drawn) == [1, 2] and activity.idle()
    with activity:  # busy, then the server goes away: nothing more is drawn, and the drawing ends at once
        thread = draw_when_idle(ex.maps, drawn.append, [3, 4], activity, stop)
        stop.set()
        thread.join(timeout=5)
    assert not thread.is_alive() and sorted(drawn) == [1, 2]


def test_a_page_brings_its_drawn_map_and_asks_the_model_only_for_a_map_not_drawn(ex):
    """One event per page where its map over time was drawn before; a page without one sets a fresh map request, whose
    change (the browser's) asks the model."""
    demo = build_app(ex, PageFiles.of(ex.bundle)).queue(default_concurrency_limit=1)
    demo.launch(server_name="127.0.0.1", server_port=free_port(), prevent_thread_lock=True, quiet=True, **LAUNCH)
    unchanged = {"__type__": "update"}
    try:
        client, j = Client(demo.local_url, verbose=False), labelled_latent(ex)
        *_, step, x0, final, caption, request = client.predict(j, api_name="/latent_page")
        assert [step, x0, final] == [0, None, None] and caption == f"Drawing latent {j}'s map over time…"  # not the last page's
        assert request.startswith(f"{j}@")
        *_, again = client.predict(j, api_name="/latent_page")
        assert again.startswith(f"{j}@") and again != request  # asked anew each time, so a failed drawing can be retried
        drawn = client.predict(again, api_name="/map_over_time")  # what the browser sends: the request, naming the latent
        assert ex.maps.path(j).is_file() and "recorded step" in drawn[3] and drawn[3].startswith(f"Latent {j} on")
        assert client.predict(j, api_name="/map_over_time")[3] == drawn[3]  # an API caller's latent id works too
        *_, step, x0, final, caption, request = client.predict(j, api_name="/latent_page")
        assert request == unchanged and (step, caption) == (drawn[0], drawn[3])
        assert np.array_equal(pixels(x0), pixels(drawn[1])) and np.array_equal(pixels(final), pixels(drawn[2]))
        # The browser's side: the request box's change runs the map (from the request), and opening a page cancels a map
        # still on its way, so a late one cannot land under the next page.
        ids = {block._id: block for block in demo.blocks.values()}
        request_box = next(block for block in ids.values() if getattr(block, "elem_id", None) == "map-request")
        maps = [d for d in demo.config["dependencies"] if d.get("api_name") == "map_over_time"]
        assert len(maps) == 1 and [tuple(t) for t in maps[0]["targets"]] == [(request_box._id, "change")] and maps[0]["inputs"] == [request_box._id]
        dependencies = demo.config["dependencies"]
        map_index = dependencies.index(maps[0])
        cancels = {tuple(target) for d in dependencies if map_index in d["cancels"] for target in d["targets"]}
        assert ("then", None) not in {(event, block) for block, event in cancels}  # Gradio never fires a cancel on a .then
        for page in (d for d in dependencies if request_box._id in d["outputs"]):  # every page event but the first load's
            trigger = dependencies[page["trigger_after"]] if page["trigger_after"] is not None else page
            assert {tuple(t) for t in trigger["targets"]} <= cancels or trigger["targets"][0][1] == "load"
    finally:
        demo.close()
