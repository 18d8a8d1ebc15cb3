"""Model work in a supervised child process, out of the web server's way (issue 27).

The UNet, the batched sampler and the handlers that wait on them run in a worker process with
its own Explorer (the bundle and its model); the server's process keeps the atlas for pages,
search and exports, so a generation never holds the interpreter a page is drawn in. A handler
is sent by reference (its module and name) with its arguments, runs on one of the worker's
threads (so concurrent requests still share the batched sampler's UNet calls, as they did in
one process) and its result comes back pickled. What it reports on the way (its place in the
queue, its step) comes back as it happens. If the worker dies, the requests it held fail with
a message, and a new worker is started for the next ones.
"""

import functools
import itertools
import logging
import multiprocessing
import os
import pickle
import sys
import threading
import time
from concurrent.futures import Future, ThreadPoolExecutor
from pathlib import Path
from typing import Callable

from backend.errors import ExplorerError
from backend.serving.progress import reporting
from ui import browse
from ui.explorer import Explorer, open_explorer
from ui.map_files import Activity, MapFiles, draw_when_idle
from ui.views import default_order

log = logging.getLogger(__name__)

WORKER_ENV = "SAE_MODEL_WORKER"  # "0": model work in the server's process (as before issue 27)
MODEL_CONCURRENCY = 16  # model events the app runs at once (ui/app.MODEL), and so the worker's threads: their runs share UNet calls
EARLY_DEATHS = 3  # a worker that dies this many times in a row before its model loads is not started again
STOPPED = ("The model worker stopped (exit code {code}) while it held this request; a new one is starting. "
           "Try again in a moment: browsing is unaffected.")
CLOSED = "The model worker was stopped with the app."
UNSENDABLE = "This request could not be sent to the model worker (it may be restarting); try again in a moment."
GAVE_UP = ("Generation is off: the model worker stopped {deaths} times before its model loaded (the server's log says why). "
           "Browsing works from the atlas.")


def spaces_module():
    """Hugging Face's `spaces` package on a ZeroGPU Space (where only the server's process, through `spaces.GPU`, gets
    the GPU), else None."""
    try:
        import spaces
    except ImportError:
        return None
    return spaces


def in_process() -> bool:
    """Whether model work stays in the server's process: asked for (WORKER_ENV=0), or on a ZeroGPU Space."""
    return os.environ.get(WORKER_ENV) == "0" or spaces_module() is not None


def local_calls(ex: Explorer) -> Callable:
    """`model(fn)` for model work in this process: fn with this explorer as its first argument (and, like
    `ModelWorker.call`, an `on_progress` for what its sampling runs report)."""
    def bind(fn: Callable) -> Callable:
        def call(*args, on_progress: Callable | None = None):
            with reporting(on_progress):
                return fn(ex, *args)
        return call
    return bind


class ModelWorker:
    """The worker process, restarted when it dies, and calls into it: `worker(fn)(*args)` runs fn(its explorer, *args) there.

    The server's explorer follows the worker's model: loading while a worker starts (generation
    requests wait for it in the worker, where their cheap checks are answered at once), then
    what the worker reports (its notice, whether it can generate). A worker that keeps dying
    before its model loads is given up on, with a notice, rather than restarted forever.
    """

    def __init__(self, ex: Explorer, model_source: str | None = None, device: str | None = None):
        self.ex, self.options = ex, (str(ex.bundle.root), model_source, device, str(ex.pictures.root), ex.maps and str(ex.maps.root))
        self._lock = threading.Lock()  # guards the process, its connection and the calls it holds
        self._sending = threading.Lock()  # one message on the pipe at a time
        self._pending: dict[int, tuple[Future, Callable | None]] = {}
        self._ids = itertools.count()
        self._closing, self._loaded, self._early_deaths = False, False, 0
        self.gave_up: str | None = None  # the notice, once the worker is not started again
        self.starts = 0
        self._start()

    def _start(self) -> None:
        """Start a worker and the thread that reads its replies (called with no calls pending)."""
        context = multiprocessing.get_context("spawn")
        ours, theirs = context.Pipe()
        self.ex.defer_model()
        self.process = context.Process(target=serve, args=(theirs, *self.options), name="model-worker", daemon=True)
        self.process.start()
        theirs.close()
        self._connection, self._loaded = ours, False
        self.starts += 1
        threading.Thread(target=self._read, args=(self.process, ours), name="model-worker-replies", daemon=True).start()

    def _read(self, process, connection) -> None:
        """Hand each reply to its call until the worker's end of the pipe closes; then fail what it held and restart it."""
        while True:
            try:
                kind, *message = connection.recv()
            except (EOFError, OSError):
                break
            except Exception:  # a reply that cannot be read: the pipe cannot be trusted, so the worker is replaced
                if not self._closing:  # (closing the pipe under a read lands here too)
                    log.exception("unreadable reply from the model worker; stopping it")
                    process.kill()
                break
            if kind == "ready":
                self._loaded = True
                self.ex.model_loaded_elsewhere(*message)
            else:
                self._deliver(kind, *message)
        process.join()
        self._stopped(process.exitcode)

    def _deliver(self, kind: str, call_id: int, value) -> None:
        """A call's progress, result or error, to the caller waiting on it."""
        with self._lock:
            future, on_progress = self._pending.get(call_id, (None, None))
            if kind != "progress":
                self._pending.pop(call_id, None)
        if future is None:
            return
        if kind == "progress":
            if on_progress is not None:
                try:
                    on_progress(value)
                except Exception:  # a visitor's progress bar never stops the replies of the others
                    log.exception("a progress callback failed")
        elif kind == "done":
            future.set_result(value)
        else:
            future.set_exception(ExplorerError(value) if kind == "refused" else RuntimeError(value))

    def _stopped(self, exitcode) -> None:
        """Start another worker (at once after one that had loaded its model, else after a pause that grows with each
        such death), then fail the calls the dead one held; after EARLY_DEATHS deaths before loading, give up instead."""
        with self._lock:
            held, self._pending = self._pending, {}
            self._early_deaths = 0 if self._loaded else self._early_deaths + 1
            if not self._closing and self._early_deaths >= EARLY_DEATHS:
                self.gave_up = GAVE_UP.format(deaths=self._early_deaths)
            restart = not self._closing and not self.gave_up
            if restart and not self._early_deaths:
                self._start()  # under the lock that new calls take: none is sent to the dead worker
        if restart:
            log.error("the model worker stopped (exit code %s) holding %d requests; starting a new one", exitcode, len(held))
        if restart and self._early_deaths:
            time.sleep(self._early_deaths)
            with self._lock:
                self._start()
        message = CLOSED if self._closing else self.gave_up or STOPPED.format(code=exitcode)
        for future, _ in held.values():
            future.set_exception(ExplorerError(message))
        if self.gave_up and not self._closing:
            log.error("the model worker stopped %d times before its model loaded; generation is off", self._early_deaths)
            self.ex.model_loaded_elsewhere(self.gave_up, False)

    def __call__(self, fn: Callable) -> Callable:
        """fn, run in the worker with its explorer as the first argument."""
        return functools.partial(self.call, fn)

    def call(self, fn: Callable, *args, on_progress: Callable | None = None):
        """fn(the worker's explorer, *args) in the worker: its result, or its ExplorerError raised here.

        `on_progress` gets what the call reports while it waits and runs (backend/serving/progress.py).
        """
        if self.gave_up:
            raise ExplorerError(self.gave_up)
        payload = pickle.dumps((fn, args))  # before the call is held: what cannot be sent fails here, alone
        future: Future = Future()
        with self._lock:
            call_id = next(self._ids)
            self._pending[call_id] = (future, on_progress)
            connection = self._connection
        try:
            with self._sending:
                connection.send((call_id, payload))
        except (OSError, ValueError):  # a worker that died fails this call with the others it held; otherwise fail it here
            log.exception("could not send a call to the model worker")
            with self._lock:
                unsent = self._pending.pop(call_id, None)
            if unsent is not None:
                raise ExplorerError(UNSENDABLE) from None
        return future.result()

    def close(self) -> None:
        """Stop the worker (and do not start another)."""
        with self._lock:
            self._closing = True
            try:  # a stop message: closing our end alone does not end the read our reply thread has in progress
                with self._sending:
                    self._connection.send(None)
            except (OSError, ValueError):
                pass
            self._connection.close()
        self.process.join(timeout=30)
        if self.process.is_alive():
            self.process.kill()


def serve(connection, bundle_root: str, model_source: str | None, device: str | None, pictures_root: str,
          maps_root: str | None) -> None:
    """The worker process: load the bundle, answer calls at once (those that need the model wait for it, as in one
    process), load the model and report it ready, then draw the maps over time not drawn yet whenever no call runs.

    Pictures of results go to the server's folders, which serve them. The whole process runs at the sampler's lower
    priority (its threads inherit it): the server's page, search and export requests come first on a busy CPU.
    """
    from backend.serving.batching import NICENESS  # here, not at the top: the server's process imports diffusers only with a model

    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s [model worker] %(message)s")
    if sys.platform == "linux":
        os.nice(NICENESS)
    ex = open_explorer(bundle_root, defer_model=True, pictures_root=Path(pictures_root))
    ex.maps = MapFiles(Path(maps_root)) if maps_root else None
    activity, closed = Activity(), threading.Event()  # closed: the server went away, so drawing ahead stops
    sending = threading.Lock()

    def reply(*message) -> None:
        with sending:
            connection.send(message)

    def run(call_id: int, payload: bytes) -> None:
        fn = "a call"
        try:
            fn, args = pickle.loads(payload)
            with activity, reporting(lambda status: reply("progress", call_id, status)):
                result = fn(ex, *args)
        except ExplorerError as err:
            reply("refused", call_id, str(err))
            return
        except Exception:
            log.exception("unexpected error in %s", getattr(fn, "__name__", fn))
            reply("failed", call_id, f"unexpected error in {getattr(fn, '__name__', fn)} (the worker's log has it)")
            return
        try:
            reply("done", call_id, result)
        except Exception:  # a result that cannot be pickled is a bug, not a reason to stop the worker
            log.exception("could not send the result of %s", getattr(fn, "__name__", fn))
            reply("failed", call_id, "a result could not be sent back (the worker's log has it)")

    def load() -> None:
        ex.load_model(model_source, device)
        reply("ready", ex.notice, ex.can_generate)
        if ex.maps is not None and ex.can_generate:
            draw_when_idle(ex.maps, functools.partial(browse.draw_map, ex), default_order(ex), activity, closed)

    threading.Thread(target=load, name="model-load", daemon=True).start()
    with ThreadPoolExecutor(MODEL_CONCURRENCY, thread_name_prefix="model-call") as pool:
        while True:
            try:
                call = connection.recv()
            except (EOFError, OSError):
                call = None
            if call is None:  # the server stopped us or went away: stop, drawing ahead too
                closed.set()
                return
            pool.submit(run, *call)
