"""Concurrent users' sampling runs stepped together: one UNet call per step for all of them (continuous batching)."""

import logging
import os
import sys
import threading
import time
from collections import deque
from concurrent.futures import Future

from backend.diffusion.inversion import InversionRun
from backend.diffusion.models import DiffusionModel
from backend.diffusion.sampler import SampleResult, SamplingRun, step_together
from backend.serving.progress import Reporter, Status, current_reporter

Run = SamplingRun | InversionRun  # anything that steps like a SamplingRun (step_together)
Entry = tuple[Run, Future, Reporter | None]  # a run, its completion, and who hears how it goes (progress.py)

log = logging.getLogger(__name__)

MAX_ROWS = 32  # UNet rows per call: 16 guided requests; on the 2-core CPU the cost per row stops falling near here
NICENESS = 10  # the worker's scheduling niceness: request handlers (niceness 0) get about 9x its share of a busy CPU


def yield_cpu_to_requests() -> None:
    """Lower the calling thread's scheduling priority (Linux; elsewhere nothing changes).

    The UNet keeps every core busy while anyone generates; at a lower priority its thread (and the
    OpenMP threads it starts, which inherit the priority) steps aside whenever a browsing request
    needs a core, and still gets all of them when nobody else does.
    """
    if sys.platform != "linux":
        return  # macOS and Windows would apply this to the whole process
    thread = threading.get_native_id()
    try:
        os.setpriority(os.PRIO_PROCESS, thread, max(os.getpriority(os.PRIO_PROCESS, thread), NICENESS))
    except OSError:
        log.warning("could not lower the sampler thread's priority; browsing may slow down while the model runs")


class BatchedSampler:
    """Runs the sampling runs of concurrent requests in shared UNet calls, on one worker thread.

    A run joins the batch at the next step boundary and leaves when it finishes, so runs that
    start late (a steered run from its window's start) or are short never wait for the whole
    batch; runs are admitted first come, first served, up to `max_rows` UNet rows per call. The
    worker holds `model_lock` during each call: whoever else runs the UNet with hooks takes it too.
    The thread stops when nothing is queued and starts again with the next run.
    """

    def __init__(self, model: DiffusionModel, model_lock: threading.RLock, max_rows: int = MAX_ROWS):
        self.model, self.model_lock, self.max_rows = model, model_lock, max_rows
        self._queue: deque[Entry] = deque()
        self._wake = threading.Condition()
        self._worker: threading.Thread | None = None
        self.calls = 0  # UNet calls made; with `rows_stepped`, how full the batches were
        self.rows_stepped = 0
        self.seconds_per_call: float | None = None  # moving average of the last UNet calls, for the time left

    def run(self, run: Run) -> SampleResult | list:
        """Step `run` to its end among whatever else is running, then take its result (decoded in the caller's thread).

        An InversionRun's result is its list of states (inversion.py).
        """
        done: Future = Future()
        with self._wake:
            self._queue.append((run, done, current_reporter()))
            if self._worker is None:
                self._worker = threading.Thread(target=self._serve, name="batched-sampler", daemon=True)
                self._worker.start()
            self._wake.notify()
        done.result()
        return run.result()

    def _admit(self, active: list[Entry]) -> None:
        """Move queued runs into the batch while they fit (in arrival order) and share the batch's image shape."""
        rows = sum(run.rows for run, *_ in active)
        shape = active[0][0].x.shape[1:] if active else None
        while self._queue:
            run = self._queue[0][0]
            fits = rows + run.rows <= self.max_rows or not active  # a run wider than max_rows still runs, alone
            if not fits or (shape is not None and run.x.shape[1:] != shape):
                return
            active.append(self._queue.popleft())
            rows, shape = rows + run.rows, run.x.shape[1:]

    def _serve(self) -> None:
        yield_cpu_to_requests()
        active: list[Entry] = []
        while True:
            with self._wake:
                self._admit(active)
                if not active:
                    self._worker = None
                    return
            started = time.perf_counter()
            try:
                with self.model_lock:
                    step_together(self.model, [run for run, *_ in active])
            except Exception as err:  # a failed call fails the runs in it (their state is mid-step); the queue goes on
                log.exception("batched UNet call failed for %d runs", len(active))
                for _, done, _ in active:
                    done.set_exception(err)
                active = []
                continue
            seconds = time.perf_counter() - started
            self.seconds_per_call = seconds if self.seconds_per_call is None else 0.8 * self.seconds_per_call + 0.2 * seconds
            self.calls += 1
            self.rows_stepped += sum(run.rows for run, *_ in active)
            for run, done, _ in active:
                if run.done:
                    done.set_result(None)
            active = [entry for entry in active if not entry[0].done]
            self._report(active)

    def _report(self, active: list[Entry]) -> None:
        """Tell each run with a reporter where it stands: its step in the batch, or its place in line and the time until
        it is likely done. The p-th in line starts about when the p-th of the batch's runs to finish does (the first n in
        line take the n places freed first, the next n the places those free, and so on; runs of one width)."""
        with self._wake:
            queued = list(self._queue)
        pace = self.seconds_per_call
        finishing = sorted(run.num_steps - run.step for run, *_ in active)  # calls until each active run is done
        statuses = [(reporter, Status(0, run.step, run.num_steps, len(active) - 1, pace and pace * (run.num_steps - run.step)))
                    for run, _, reporter in active]
        for place, (run, _, reporter) in enumerate(queued, start=1):
            rounds, slot = divmod(place - 1, len(finishing)) if finishing else (0, 0)
            wait = finishing[slot] + rounds * run.num_steps if finishing else 0
            statuses.append((reporter, Status(place, run.step, run.num_steps, 0, pace and pace * (wait + run.num_steps - run.step))))
        for reporter, status in statuses:
            if reporter is not None:
                try:
                    reporter(status)
                except Exception:  # a visitor's progress bar never stops the batch
                    log.exception("a progress reporter failed")
