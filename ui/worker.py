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
import threading
from concurrent.futures import Future, ThreadPoolExecutor
from typing import Callable

from backend.errors import ExplorerError
from backend.serving.progress import reporting
from ui.explorer import MODEL_WAIT, Explorer, open_explorer

log = logging.getLogger(__name__)

WORKER_ENV = "SAE_MODEL_WORKER"  # "0": model work in the server's process (as before issue 27)
THREADS = 16  # handlers running at once: as many as the app lets model events run (ui/app.MODEL), so their runs share UNet calls
STOPPED = ("The model worker stopped (exit code {code}) while it held this request; a new one is starting. "
           "Try again in a moment: browsing is unaffected.")


def in_process() -> bool:
    """Whether model work stays in the server's process: asked for, or on a ZeroGPU Space, whose GPU only the
    server's process (through `spaces.GPU`) gets."""
    if os.environ.get(WORKER_ENV) == "0":
        return True
    try:
        import spaces  # noqa: F401
    except ImportError:
        return False
    return True


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
    requests wait for it), then what the worker reports (its notice, whether it can generate).
    """

    def __init__(self, ex: Explorer, model_source: str | None = None, device: str | None = None):
        self.ex, self.options = ex, (str(ex.bundle.root), model_source, device)
        self._lock = threading.Lock()  # guards the process, its connection and the calls it holds
        self._sending = threading.Lock()  # one message on the pipe at a time
        self._pending: dict[int, tuple[Future, Callable | None]] = {}
        self._ids = itertools.count()
        self._closing = False
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
        self._connection = ours
        self.starts += 1
        threading.Thread(target=self._read, args=(self.process, ours), name="model-worker-replies", daemon=True).start()

    def _read(self, process, connection) -> None:
        """Hand each reply to its call until the worker's end of the pipe closes; then fail what it held and restart it."""
        while True:
            try:
                kind, *message = connection.recv()
            except (EOFError, OSError):
                break
            if kind == "ready":
                self.ex.model_loaded_elsewhere(*message)
                continue
            call_id, value = message
            with self._lock:
                future, on_progress = self._pending.get(call_id, (None, None))
                if kind != "progress":
                    self._pending.pop(call_id, None)
            if future is None:
                continue
            if kind == "progress":
                if on_progress is not None:
                    on_progress(value)
            elif kind == "done":
                future.set_result(value)
            else:
                future.set_exception(ExplorerError(value) if kind == "refused" else RuntimeError(value))
        process.join()
        with self._lock:
            held, self._pending = self._pending, {}
            if not self._closing:
                log.error("the model worker stopped (exit code %s) holding %d requests; starting a new one", process.exitcode, len(held))
                self._start()
        for future, _ in held.values():
            future.set_exception(ExplorerError(STOPPED.format(code=process.exitcode)))

    def __call__(self, fn: Callable) -> Callable:
        """fn, run in the worker with its explorer as the first argument."""
        return functools.partial(self.call, fn)

    def call(self, fn: Callable, *args, on_progress: Callable | None = None):
        """fn(the worker's explorer, *args) in the worker: its result, or its ExplorerError raised here.

        `on_progress` gets what the call reports while it waits and runs (backend/serving/progress.py).
        """
        if not self.ex.model_settled.wait(MODEL_WAIT):
            raise ExplorerError("The model is still loading; try again in a moment.")
        payload = pickle.dumps((fn, args))  # before the call is held: what cannot be sent fails here, alone
        future: Future = Future()
        with self._lock:
            call_id = next(self._ids)
            self._pending[call_id] = (future, on_progress)
            connection = self._connection
        try:
            with self._sending:
                connection.send((call_id, payload))
        except (OSError, ValueError):  # the worker is gone: its reader fails this call with the others it held
            pass
        return future.result()

    def close(self) -> None:
        """Stop the worker (and do not start another)."""
        with self._lock:
            self._closing = True
            self._connection.close()
        self.process.join(timeout=30)
        if self.process.is_alive():
            self.process.kill()


def serve(connection, bundle_root: str, model_source: str | None, device: str | None) -> None:
    """The worker process: load the bundle and its model, report ready, then run each call on a thread of its own."""
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s [model worker] %(message)s")
    ex = open_explorer(bundle_root, model_source, device)
    sending = threading.Lock()

    def reply(*message) -> None:
        with sending:
            connection.send(message)

    def run(call_id: int, payload: bytes) -> None:
        fn = "a call"
        try:
            fn, args = pickle.loads(payload)
            with reporting(lambda status: reply("progress", call_id, status)):
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

    reply("ready", ex.notice, ex.can_generate)
    with ThreadPoolExecutor(THREADS, thread_name_prefix="model-call") as pool:
        while True:
            try:
                call_id, payload = connection.recv()
            except (EOFError, OSError):
                return  # the server closed its end: stop
            pool.submit(run, call_id, payload)
