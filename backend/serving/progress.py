"""What a generation reports while it waits and runs: its place in the queue, its step, the time left (issue 27).

A request sets a reporter for its thread (`reporting`). The batched sampler serves every
request's runs on a thread of its own, so it takes the reporter with each run it is given and
calls it as the run waits for room in the batch and as it steps.
"""

import contextlib
import threading
from dataclasses import dataclass
from typing import Callable, Iterator


@dataclass(frozen=True)
class Status:
    """Where one sampling run stands."""

    place: int  # its place in line for room in the batch, 1 first (0: it is in the batch)
    step: int  # steps done
    steps: int  # steps in all
    sharing: int  # other runs in the same UNet calls
    seconds_left: float | None  # at the last UNet calls' pace; None before the first call was timed

    def text(self) -> str:
        """One line for the visitor, e.g. 'step 7 of 20, sharing each model call with 15 other runs · about 6 s left'.

        Runs, not requests: a steer is a base and a steered run, a Find one per prompt and seed."""
        left = "" if self.seconds_left is None else " · under a second left" if self.seconds_left < 1 else f" · about {self.seconds_left:.0f} s left"
        if self.place:
            return f"waiting for room in the model's batch: place {self.place} in line{left}"
        shared = f", sharing each model call with {self.sharing} other run{'s' * (self.sharing > 1)}" if self.sharing else ""
        return f"step {self.step} of {self.steps}{shared}{left}"


Reporter = Callable[[Status], None]
_local = threading.local()


@contextlib.contextmanager
def reporting(reporter: Reporter | None) -> Iterator[None]:
    """Within this block, runs this thread hands the batched sampler report to `reporter` (None: to no one)."""
    previous = getattr(_local, "reporter", None)
    _local.reporter = reporter
    try:
        yield
    finally:
        _local.reporter = previous


def current_reporter() -> Reporter | None:
    """The reporter this thread set, if any."""
    return getattr(_local, "reporter", None)


def with_reporter(fn: Callable) -> Callable:
    """`fn`, which reports to this thread's reporter when a pool runs it on another thread (where none is set)."""
    reporter = current_reporter()

    def run(*args, **kwargs):
        with reporting(reporter):
            return fn(*args, **kwargs)
    return run
