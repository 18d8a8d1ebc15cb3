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

    ahead: int  # runs queued before this one (0: it is in the batch)
    step: int  # steps done
    steps: int  # steps in all
    sharing: int  # other runs in the same UNet calls
    seconds_left: float | None  # at the last UNet calls' pace; None before the first call was timed

    def text(self) -> str:
        """One line for the visitor, e.g. 'step 7 of 20, sharing each model call with 15 other generations · about 6 s left'."""
        left = "" if self.seconds_left is None else " · under a second left" if self.seconds_left < 1 else f" · about {self.seconds_left:.0f} s left"
        if self.ahead:
            return f"in the queue: {self.ahead} generation{'s' * (self.ahead > 1)} ahead of yours{left}"
        shared = f", sharing each model call with {self.sharing} other generation{'s' * (self.sharing > 1)}" if self.sharing else ""
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
