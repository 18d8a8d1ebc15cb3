"""Model work in a supervised worker process (ui/worker.py) and what generations report while they wait (progress.py)."""

import contextvars
import os
import pickle
import shutil
import threading
import time
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from backend.diffusion.models import save_model
from backend.errors import ExplorerError
from backend.serving.bundle import Bundle
from backend.serving.progress import Status
from tests.test_ui_handlers import NO_STEER, labelled_latent, one_thread, tiny_explorer, ui_bundle_dir
from tests.tiny_models import tiny_model
from ui import browse, find, status, steer, views
from ui.explorer import Explorer
from ui.map_files import PREDRAW_ENV, MapFiles
from ui.worker import EARLY_DEATHS, GAVE_UP, STOPPED, ModelWorker, local_calls

STEER_ARGS = ("a red circle", 3, 4.0, 0, 5, "everywhere", [], None)


def pixels(picture) -> np.ndarray:
    return np.asarray(Image.open(picture), dtype=np.int16)


def exit_now(ex, code: int):
    """Run in the worker: the process dies mid-request."""
    os._exit(code)


def wait_then_pid(ex, seconds: float) -> int:
    time.sleep(seconds)
    return os.getpid()


def refuse(ex, message: str):
    raise ExplorerError(message)


def break_down(ex):
    raise KeyError("a bug")


@pytest.fixture(scope="module")
def worker(tmp_path_factory):
    """A worker on the tiny bundle, its model loaded from a saved copy of the tiny model the bundle was built with."""
    model_dir = tmp_path_factory.mktemp("tiny-model")
    save_model(tiny_model(), model_dir)
    server = Explorer(Bundle.load(ui_bundle_dir()))
    with one_thread():  # the spawned worker starts with the parent's thread count in its environment
        os.environ["OMP_NUM_THREADS"] = "1"
        try:
            running = ModelWorker(server, str(model_dir), "cpu")
        finally:
            del os.environ["OMP_NUM_THREADS"]
    assert server.model_settled.wait(120), "the worker did not load its model"
    yield running
    running.close()


def test_a_steer_in_the_worker_equals_one_run_here(worker):
    ex = tiny_explorer()
    j = labelled_latent(ex)
    controls = (str(j), 0.5, "add", *NO_STEER)
    with one_thread():
        here = local_calls(ex)(steer.steer)(*STEER_ARGS, *controls)
    there = worker(steer.steer)(*STEER_ARGS, *controls)
    assert worker.ex.model_state == "ready" and worker.ex.notice == ""
    for mine, theirs in zip(here[:3], there[:3]):  # pictures as files, written there into the server's folder
        assert Path(theirs).parent == worker.ex.pictures.root
        assert np.abs(pixels(mine) - pixels(theirs)).max() <= 1  # float rounding
    assert here[4] == there[4]


def test_a_refusal_in_the_worker_is_the_same_message_here_and_a_bug_is_not_shown(worker):
    with pytest.raises(ExplorerError, match="^Latent 99 is not here.$"):
        worker.call(refuse, "Latent 99 is not here.")
    with pytest.raises(RuntimeError, match="unexpected error in break_down") as err:
        worker.call(break_down)
    assert "a bug" not in str(err.value)
    with pytest.raises((pickle.PicklingError, AttributeError), match="pickle"):
        worker.call(wait_then_pid, lambda: None)  # cannot be sent: fails here, and nothing is held
    assert worker.call(wait_then_pid, 0) == worker.process.pid and not worker._pending


def test_a_worker_that_dies_fails_the_requests_it_held_and_the_next_one_works(worker):
    first_pid, starts = worker.process.pid, worker.starts
    held = []

    def slow_request():
        try:
            worker.call(wait_then_pid, 30)
        except ExplorerError as err:
            held.append(str(err))

    waiting = threading.Thread(target=slow_request)
    waiting.start()
    time.sleep(1)
    with pytest.raises(ExplorerError, match="stopped \\(exit code 3\\)"):
        worker.call(exit_now, 3)
    waiting.join(timeout=60)
    assert held == [STOPPED.format(code=3)]
    assert worker.call(wait_then_pid, 0) not in (None, first_pid) and worker.starts == starts + 1
    assert worker.ex.model_settled.wait(120) and worker.ex.model_state == "ready"  # the new worker answered before its model loaded


def test_a_generation_reports_its_steps(worker):
    ex = tiny_explorer()
    controls = (str(labelled_latent(ex)), -0.3, "add", *NO_STEER)
    seen: list[Status] = []
    with one_thread():
        local_calls(ex)(steer.steer)(*STEER_ARGS, *controls, on_progress=seen.append)
    there: list[Status] = []
    worker.call(steer.steer, *STEER_ARGS, *controls, on_progress=there.append)
    for statuses in (seen, there):  # a fresh seed's base run is sampled beside the steered one: one may wait a step for it
        assert statuses and all(0 <= s.step <= s.steps and s.place <= 1 for s in statuses)
        assert any(s.place == 0 and s.step > 0 for s in statuses)
        assert statuses[-1].seconds_left is not None and "step" in statuses[-1].text()


def test_a_status_reads_as_a_place_in_the_queue_or_a_step():
    assert Status(3, 0, 20, 0, 12.4).text() == "waiting for room in the model's batch: place 3 in line · about 12 s left"
    assert Status(1, 0, 20, 0, None).text() == "waiting for room in the model's batch: place 1 in line"
    assert Status(0, 7, 20, 15, 6.2).text() == "step 7 of 20, sharing each model call with 15 other runs · about 6 s left"
    assert Status(0, 7, 20, 0, None).text() == "step 7 of 20"
    assert Status(0, 19, 20, 1, 0.3).text() == "step 19 of 20, sharing each model call with 1 other run · under a second left"


def test_a_find_reports_the_steps_of_its_runs_from_the_pool_that_samples_them():
    ex = tiny_explorer()
    seen: list[Status] = []
    with one_thread():
        local_calls(ex)(find.find_latents)("a red circle", "a blue circle", 2, on_progress=seen.append)
    assert seen and max(s.sharing for s in seen) >= 1  # its four runs (prompt × seed) shared calls, and reported


def test_progress_from_another_thread_reaches_the_events_bar(monkeypatch):
    """The sampler (or the worker's reply reader) reports from its own thread; the bar reads the event's context."""
    event = contextvars.ContextVar("event", default=None)
    shown = []

    class Bar:
        def __call__(self, progress, desc=None):
            shown.append((event.get(), progress, desc))
    monkeypatch.setattr(status.gr, "Progress", Bar)

    def call(on_progress):
        reporter = threading.Thread(target=on_progress, args=(Status(0, 3, 20, 1, 2.0),))
        reporter.start()
        reporter.join()
        return "done"

    event.set("event 7")
    assert status.progressed(call)() == "done"
    assert shown == [("event 7", (3, 20), Status(0, 3, 20, 1, 2.0).text())]


def test_a_worker_that_keeps_dying_before_its_model_loads_is_given_up_on(tmp_path):
    shutil.copytree(ui_bundle_dir(), tmp_path / "bundle")
    server = Explorer(Bundle.load(tmp_path / "bundle"))
    (tmp_path / "bundle" / "bundle.json").unlink()  # the worker cannot open it
    worker = ModelWorker(server)
    try:
        deadline = time.monotonic() + 180
        while worker.gave_up is None:
            assert time.monotonic() < deadline, "the worker was not given up on"
            time.sleep(0.2)
        assert worker.starts == EARLY_DEATHS and worker.gave_up == GAVE_UP.format(deaths=EARLY_DEATHS)
        assert server.model_state == "off" and server.notice == worker.gave_up
        with pytest.raises(ExplorerError, match="Generation is off"):
            worker.call(wait_then_pid, 0)
    finally:
        worker.close()


def test_an_idle_worker_draws_the_maps_into_the_folder_the_server_reads_and_stops_with_it(tmp_path, monkeypatch):
    model_dir = tmp_path / "model"
    save_model(tiny_model(), model_dir)
    server = Explorer(Bundle.load(ui_bundle_dir()))
    server.maps = MapFiles(tmp_path / "maps")
    monkeypatch.delenv(PREDRAW_ENV, raising=False)
    with one_thread():
        os.environ["OMP_NUM_THREADS"] = "1"
        try:
            running = ModelWorker(server, str(model_dir), "cpu")
        finally:
            del os.environ["OMP_NUM_THREADS"]
    try:
        order = views.default_order(server)
        local = [j for j in order if server.table.kinds[j] != "global"]
        deadline = time.time() + 240
        while server.maps.missing(local) and time.time() < deadline:
            time.sleep(1)
        assert not server.maps.missing(local), "the idle worker did not draw every map"
        line = browse.drawn_timeline_view(server, local[0])[0]  # read here, without the model
        assert all(Path(file).parent == server.maps.images.root and Path(file).is_file() for frame in line.frames for file in frame)
    finally:
        started = time.time()
        running.close()
    assert time.time() - started < 20  # stopped at once, not killed after close's 30 s
    with pytest.raises(ProcessLookupError):
        os.kill(running.process.pid, 0)
