"""Feature icons on screen: a latent's icons on its page, and a strip of them in each row of the latent table."""

from pathlib import Path

import numpy as np
from PIL import Image

from ui.explorer import Explorer
from ui.image_files import ImageFiles
from ui.images import to_pil, upscale
from ui.state import MAX_ALPHA, MAX_SEED

TABLE_ICON_PX = 48  # larger icons (SD 1.5's) are shrunk to this height for the table, which shows them 24 px tall
HEADER = "icons"  # the latent table's second column (after the id) when the bundle has icons


def strength_caption(strength: float) -> str:
    return f"α = {strength:+g} × s"


def icon_gallery(ex: Explorer, j: int) -> tuple[list[tuple[Image.Image, str]], str]:
    """Latent j's icons beside the unsteered image, as gallery items, and a line saying how they were drawn."""
    icons = ex.icons
    if icons is None:
        return [], ex.icon_note
    if not icons.drawn[j]:
        return [], f"Latent {j} never fired on the atlas images: it has no typical activation to steer in units of, so no icon."
    settings = icons.settings
    prompt = f"“{settings.prompt}”" if settings.prompt else "the empty prompt"
    items = [(upscale(icons.base), "nothing added")]
    items += [(upscale(image), strength_caption(a)) for a, image in zip(settings.strengths, icons.images[j])]
    note = (f"**Feature icon**: latent {j} added at every position and step to {prompt} (seed {settings.seed}), "
            f"in units of its typical activation s = {float(ex.bundle.typical_activation[j]):.3g}")
    return items, note + ("; the Steer tab draws the same." if steerable(settings) else ".")


def steerable(settings) -> bool:
    """Whether the Steer tab can ask for these icons' runs: a typed prompt, strengths its sliders reach, a seed it takes."""
    return bool(settings.prompt) and all(abs(a) <= MAX_ALPHA for a in settings.strengths) and settings.seed <= MAX_SEED


def icon_strip(ex: Explorer, j: int) -> Image.Image:
    """Latent j's icons side by side, in the order of the bundle's strengths, at most TABLE_ICON_PX tall."""
    strip = to_pil(np.concatenate(list(ex.icons.images[j].numpy()), axis=1))
    if strip.height > TABLE_ICON_PX:
        strip = strip.resize((strip.width * TABLE_ICON_PX // strip.height, TABLE_ICON_PX), Image.BOX)
    return strip


class IconCells:
    """The latent table's icon cells: each latent's strip drawn and written once, its cell kept for every later search.

    Its file store has room for a strip per latent, so no kept cell ever points at a dropped file.
    """

    def __init__(self, ex: Explorer, root: Path):
        self.ex, self.files = ex, ImageFiles(root, max_files=ex.bundle.n_latents)
        self._cells: dict[int, str] = {}

    def cell(self, j: int) -> str:
        """A markdown picture of latent j's icon strip; empty for a latent without icons (it never fired)."""
        if j not in self._cells:  # two requests may both draw it first: the same text, and the file is written once
            drawn = self.ex.icons.drawn[j]
            self._cells[j] = f"![latent {j}](gradio_api/file={self.files.path(icon_strip(self.ex, j))})" if drawn else ""
        return self._cells[j]

    def rows(self, rows: list[list]) -> list[list]:
        """Table rows (latent id first) with the latent's icon cell after the id; unchanged when the bundle has no icons."""
        if self.ex.icons is None:
            return rows
        return [row[:1] + [self.cell(row[0])] + row[1:] for row in rows]
