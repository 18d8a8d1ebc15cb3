"""What the app serves: a loaded bundle, its model when one could be loaded, and a notice saying what is off."""

from dataclasses import dataclass, field

from backend.errors import ExplorerError
from backend.serving.bundle import Bundle
from backend.serving.opener import open_bundle
from ui.latents import LatentTable


@dataclass
class Explorer:
    """A bundle ready to browse; `notice` is shown on every page when generation is off or slow."""

    bundle: Bundle
    notice: str = ""
    table: LatentTable = field(init=False)

    def __post_init__(self):
        if not self.bundle.has_atlas:
            raise ExplorerError(f"Bundle {self.bundle.root} has no atlas; run `python -m backend.build` through the atlas stage.")
        for name in ("thumbnails", "images", "latent_index"):  # load once, before requests race
            getattr(self.bundle, name)
        self.table = LatentTable.of(self.bundle)

    @property
    def can_generate(self) -> bool:
        return getattr(self.bundle, "generator", None) is not None

    def generator(self):
        """The bundle's generator, or an ExplorerError saying why there is none."""
        if not self.can_generate:
            raise ExplorerError(self.notice or "This bundle has no model attached; generation is off.")
        return self.bundle.generator

    @property
    def recorded_steps(self) -> list[int]:
        return [int(s) for s in self.bundle.manifest["schedule"]["recorded_steps"]]

    @property
    def num_steps(self) -> int:
        return int(self.bundle.manifest["schedule"]["num_steps"])


def open_explorer(bundle_source: str, model_source: str | None = None, device: str | None = None) -> Explorer:
    """The bundle ready to browse, with its model when one could be loaded (see `open_bundle`)."""
    opened = open_bundle(bundle_source, model_source, device)
    return Explorer(opened.bundle, notice=opened.notice)
