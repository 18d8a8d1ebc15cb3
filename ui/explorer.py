"""What the app serves: a loaded bundle, its model when one could be loaded, and a notice saying what is off."""

import logging
from dataclasses import dataclass, field

from backend.bundle import Bundle
from backend.errors import ExplorerError
from backend.models import load_model
from ui.latents import LatentTable

log = logging.getLogger(__name__)

SLOW_ON_CPU = 200_000_000  # UNet parameters above which CPU generation takes minutes (SD 1.5 has 860M)


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
    """Load the bundle (errors are fatal) and its model (errors only switch generation off, with a notice)."""
    bundle = Bundle.load(bundle_source)
    source = model_source or bundle.manifest["model"]["source"]
    try:
        model = load_model(source, device=device or None)
    except Exception as err:  # a model that cannot load only switches generation off (a bad --device, too)
        log.warning("generation off: %s", err)
        return Explorer(bundle, notice=f"Generation is off: {err} Browsing works from the atlas.")
    bundle.attach_model(model)
    size = sum(p.numel() for p in model.unet.parameters())
    notice = ""
    if model.device.type != "cuda" and size > SLOW_ON_CPU:
        notice = f"No GPU: this {size / 1e6:.0f}M-parameter model runs on the CPU, so each generation takes minutes. Browsing is instant."
    return Explorer(bundle, notice=notice)
