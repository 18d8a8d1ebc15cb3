"""What the app serves: a loaded bundle, its model once loaded, and a notice saying what is off."""

import threading
from dataclasses import dataclass, field
from pathlib import Path

from backend.errors import ExplorerError
from backend.serving.bundle import Bundle
from backend.serving.icons import FeatureIcons
from backend.serving.opener import attach_model
from backend.serving.recent import Recent
from ui.image_files import RESULTS_KEPT, ImageFiles, temporary_folder
from ui.map_files import MapFiles
from ui.latents import LatentTable

MODEL_WAIT = 300.0  # seconds a generation request waits for a model still loading before it gives up
FIRST_PAGE_GRACE = 5.0  # seconds a deferred model load waits for the first visitor's latent page to be served
TIMELINES, PAGES = 16, 128  # how many maps over time and latent pages are kept in memory
LOADING = "The model is loading; browsing works now, and generation starts as soon as it is ready."


@dataclass
class Explorer:
    """A bundle ready to browse; `notice` is shown on every page when generation is off, slow or not ready yet."""

    bundle: Bundle
    notice: str = ""
    pictures_root: Path | None = None  # where pictures of model results go (the server's folder, in its model worker); None: a new one
    table: LatentTable = field(init=False)
    model_settled: threading.Event = field(init=False)  # clear while the model loads: generation waits on it
    page_served: threading.Event = field(init=False)  # set once a latent page has been answered
    icons: FeatureIcons | None = field(init=False)  # None: the bundle has none, or they cannot be used (`icon_note` says why)
    icon_note: str = field(init=False)
    pictures: ImageFiles = field(init=False)  # maps over time and steered images as files: a session keeps their paths
    maps: MapFiles | None = field(init=False, default=None)  # maps over time kept as files (ui/map_files.py); None: not kept

    def __post_init__(self):
        if not self.bundle.has_atlas:
            raise ExplorerError(f"Bundle {self.bundle.root} has no atlas; run `python -m backend.build` through the atlas stage.")
        for name in ("thumbnails", "images", "latent_index"):  # load once, before requests race
            getattr(self.bundle, name)
        self.table = LatentTable.of(self.bundle)
        try:  # a bundle without usable icons still serves everything else
            self.icons, self.icon_note = self.bundle.icons, ""
        except ExplorerError as err:
            self.icons, self.icon_note = None, str(err)
        self.model_settled = threading.Event()
        self.model_settled.set()
        self.page_served = threading.Event()
        self.pictures = ImageFiles(self.pictures_root or temporary_folder("results"), max_files=RESULTS_KEPT)
        self.timelines: Recent = Recent(TIMELINES)  # maps over time by (latent, prompt, seed): reopened pages run no model
        self.pages: Recent = Recent(PAGES)  # served latent pages by latent id: reopened pages read no file
        self.generates_elsewhere: bool | None = None  # with the model in a worker process (ui/worker.py): whether it can generate

    @property
    def can_generate(self) -> bool:
        if self.generates_elsewhere is not None:
            return self.generates_elsewhere
        return getattr(self.bundle, "generator", None) is not None

    @property
    def model_state(self) -> str:
        """'loading', 'ready', or 'off' (no model could be loaded)."""
        if not self.model_settled.is_set():
            return "loading"
        return "ready" if self.can_generate else "off"

    def defer_model(self) -> None:
        """Mark the model as on its way: generation requests wait for `load_model` instead of failing."""
        self.model_settled.clear()
        self.notice = LOADING

    def load_model(self, model_source: str | None = None, device: str | None = None, grace: float = 0.0) -> None:
        """Load and attach the bundle's model (or `model_source`); a failure only switches generation off.

        With `grace`, first wait up to that many seconds for a latent page to be served: importing
        diffusers holds the GIL for seconds, and a first visitor's page should not wait behind it.
        """
        self.page_served.wait(grace)
        try:
            self.notice = attach_model(self.bundle, model_source, device)
        finally:
            self.model_settled.set()

    def model_loaded_elsewhere(self, notice: str, can_generate: bool) -> None:
        """The model's state as the worker process that loaded it reports it (ui/worker.py)."""
        self.notice, self.generates_elsewhere = notice, can_generate
        self.model_settled.set()

    def generator(self, wait: float = MODEL_WAIT):
        """The bundle's generator (waiting for a model still loading), or an ExplorerError saying why there is none."""
        if not self.model_settled.wait(wait):
            raise ExplorerError("The model is still loading; try again in a moment.")
        if not self.can_generate:
            raise ExplorerError(self.notice or "This bundle has no model attached; generation is off.")
        return self.bundle.generator

    @property
    def recorded_steps(self) -> list[int]:
        return [int(s) for s in self.bundle.manifest["schedule"]["recorded_steps"]]

    @property
    def num_steps(self) -> int:
        return int(self.bundle.manifest["schedule"]["num_steps"])


def open_explorer(bundle_source: str, model_source: str | None = None, device: str | None = None,
                  defer_model: bool = False, pictures_root: Path | None = None) -> Explorer:
    """The bundle ready to browse, with its model when one could be loaded (see `attach_model`).

    With `defer_model` the model is not loaded here: the caller starts serving, then calls
    `Explorer.load_model`, and generation requests wait for it meanwhile.
    """
    explorer = Explorer(Bundle.load(bundle_source), pictures_root=pictures_root)
    if defer_model:
        explorer.defer_model()
    else:
        explorer.load_model(model_source, device)
    return explorer
