"""Maps over time as files: each latent's map on its top image regenerated once, then read without the model (issue 27).

A latent page's map over time is the same for every visitor (the latent on its top atlas image,
regenerated with the bundle's model), so it is drawn once and written beside the latent pages:
one JSON file per latent (its title, sampler steps and frame files) and its frames as lossless
WebP files named by their pixels' hash. The server answers a map that has its file without the
model; the model worker draws the others when first asked, and those not asked yet while it
is idle (`draw_when_idle`), so that later visitors get them at once.

Maps are kept only for the bundle's own model (the weights whose digests the bundle records):
the folder's name is a digest of that record, under the page folder, whose key covers the
bundle, the app's code and the drawing libraries. Another model's maps are not the bundle's,
so with `--model` they are drawn for each process and not written.
"""

import hashlib
import json
import logging
import os
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Callable

from tqdm import tqdm

from backend.errors import ExplorerError
from backend.io import write_json
from ui.image_files import LatentFiles
from ui.timeline import Timeline

log = logging.getLogger(__name__)

PREDRAW_ENV = "SAE_MAP_PREDRAW"  # "0": maps are drawn only when asked
AT_ONCE = 8  # maps drawn side by side while idle: their runs share UNet calls
IDLE_SECONDS = 2.0  # how long no visitor's request ran before drawing resumes


class MapFiles(LatentFiles):
    """One bundle's maps over time (for its own model) under `root`: `<j>.json` per latent, frames under `images/`."""

    @classmethod
    def of(cls, pages_root: Path, bundle, model_source: str | None) -> "MapFiles | None":
        """The maps folder of this bundle's own model under its page folder; None with another model (`model_source`) or
        when the bundle records no weight digests (the weights loaded would not be known to be its own)."""
        if model_source or not bundle.manifest["model"].get("files"):  # unrecorded weights: any could be loaded
            return None
        model = hashlib.sha256(json.dumps(bundle.manifest["model"], sort_keys=True).encode()).hexdigest()[:16]
        return cls(Path(pages_root) / f"maps-{model}")

    def write(self, line: Timeline) -> Timeline:
        """Write a drawn map (frames first, its JSON last and atomically); the map as it is served from now on."""
        frames = [[Path(self.images.path(x0)).name, Path(self.images.path(final)).name] for x0, final in line.frames]
        write_json(self.path(line.latent), {"latent": line.latent, "steps": line.steps, "title": line.title, "frames": frames})
        return self.read(line.latent)

    def read(self, j: int) -> Timeline | None:
        """Latent j's map as written, or None when it has not been drawn yet (or lost a frame file: it is drawn again)."""
        record = self.record(j)
        if record is None:
            return None
        frames = [(str(self.images.root / x0), str(self.images.root / final)) for x0, final in record["frames"]]
        if not all(Path(file).is_file() for frame in frames for file in frame):
            return None
        return Timeline(latent=record["latent"], steps=record["steps"], frames=frames, title=record["title"])


def draw_maps(maps: MapFiles, draw: Callable[[int], object], todo: list[int], idle: Callable[[], bool] = lambda: True,
              stop: threading.Event | None = None, progress: bool = False) -> int:
    """Draw the maps of `todo` into `maps` with `draw(j)`, AT_ONCE side by side, each only once `idle()` (waiting
    otherwise) and none once `stop` is set; how many were written. A global latent has no map and is passed over."""
    stop = stop or threading.Event()

    def one(j: int) -> bool:
        while not idle() and not stop.is_set():
            stop.wait(IDLE_SECONDS / 2)
        if stop.is_set():
            return False
        try:
            draw(j)
        except ExplorerError as err:
            log.info("no map over time for latent %d: %s", j, err)
        return maps.path(j).exists()

    with ThreadPoolExecutor(AT_ONCE, thread_name_prefix="maps-ahead") as pool:
        return sum(tqdm(pool.map(one, todo), total=len(todo), desc="maps over time", unit="map", disable=not progress))


class Activity:
    """Visitors' requests in flight in this process, and when the last one ended: whether drawing ahead may run."""

    def __init__(self):
        self._lock = threading.Lock()
        self._running, self._last = 0, time.monotonic()

    def __enter__(self):
        with self._lock:
            self._running += 1

    def __exit__(self, *exc):
        with self._lock:
            self._running -= 1
            self._last = time.monotonic()

    def idle(self) -> bool:
        """No request running, and none ended in the last IDLE_SECONDS."""
        with self._lock:
            return self._running == 0 and time.monotonic() - self._last >= IDLE_SECONDS


def draw_when_idle(maps: MapFiles, draw: Callable[[int], object], order: list[int], activity: Activity,
                   stop: threading.Event) -> threading.Thread | None:
    """Draw the maps of `order` not written yet in a background thread, whenever no visitor's request runs, until `stop`
    (None when PREDRAW_ENV is '0' or none is left to draw)."""
    todo = maps.missing(order)
    if os.environ.get(PREDRAW_ENV) == "0" or not todo:
        return None
    thread = threading.Thread(target=lambda: log.info("drew %d maps over time ahead", draw_maps(maps, draw, todo, activity.idle, stop)),
                              name="maps-ahead", daemon=True)
    thread.start()
    return thread
