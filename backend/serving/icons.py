"""Feature icons: every latent steered into one neutral prompt at a few strengths (SDXL-Unbox's "feature icon").

An icon is exactly what the Steer tab draws for that prompt, seed and strength with the latent
added everywhere over the whole schedule, kept at the atlas's thumbnail size: the latent seen on
its own, away from the images that happen to contain it. The build's icons stage draws them
(icon_drawing.py); this module is what serving reads, without loading diffusers.
"""

import math
from dataclasses import dataclass

from torch import Tensor

from backend.diffusion.steering import MAX_STRENGTH
from backend.errors import ExplorerError

ICON_FILE = "atlas/icons.safetensors"
EFFECTS_FILE = "atlas/effects.json"  # per latent: the factor values its strongest icon shows and the neutral image does not
DEFAULT_STRENGTHS = (1.0, 2.0, 4.0)
MAX_ICON_STRENGTHS = 8
ICON_PX = 64  # icons are kept at most this large: 16 384 SD 1.5 latents × 3 strengths is 0.6 GB at 64 px, 2.4 GB at 128


@dataclass(frozen=True)
class IconSettings:
    """What every icon of a bundle was drawn with; the manifest's "icons" entry records it."""

    prompt: str  # "" is the unconditional image
    seed: int
    strengths: tuple[float, ...]  # α, in units of each latent's typical activation

    def __post_init__(self):
        if not 1 <= len(self.strengths) <= MAX_ICON_STRENGTHS:
            raise ExplorerError(f"Feature icons take 1 to {MAX_ICON_STRENGTHS} strengths, got {len(self.strengths)}.")
        if not all(math.isfinite(a) and 0 < abs(a) <= MAX_STRENGTH for a in self.strengths):
            raise ExplorerError(f"Icon strengths must be non-zero and within ±{MAX_STRENGTH:g}, got {list(self.strengths)}.")
        if self.seed < 0:
            raise ExplorerError(f"The icon seed must be 0 or more, got {self.seed}.")
        if self.prompt and not self.prompt.strip():
            raise ExplorerError("The icon prompt is only spaces; pass text, or \"\" for the unconditional image.")

    @classmethod
    def parse(cls, prompt: str, seed: int, strengths: str) -> "IconSettings":
        """Settings from command-line text: strengths as "1,2,4"."""
        try:
            values = tuple(float(a) for a in strengths.split(",") if a.strip())
        except ValueError:
            raise ExplorerError(f"Icon strengths must be numbers separated by commas, got {strengths!r}.") from None
        return cls(prompt, seed, values)

    def record(self, atlas_sha256: str) -> dict:
        """The manifest's "icons" entry; the atlas's hash ties the icons to the typical activations they are in units of."""
        return {"prompt": self.prompt, "seed": self.seed, "strengths": list(self.strengths), "atlas_sha256": atlas_sha256}


@dataclass(frozen=True)
class FeatureIcons:
    """A bundle's icons: the neutral image, and every latent steered into it at each strength."""

    settings: IconSettings
    base: Tensor  # uint8 [h, w, 3]: nothing steered
    images: Tensor  # uint8 [n_latents, S, h, w, 3]
    drawn: Tensor  # bool [n_latents]: dead latents have no typical activation to steer in units of, so no icon


def effect_text(changes: list[dict] | None) -> str:
    """An effect label as text: "colour red, size large", "colour red (fills the image)", "no visible change", or "" for a
    latent without icons."""
    if changes is None:
        return ""
    return ", ".join(f"{c['factor']} {c['value']}" + (f" ({c['note']})" if c.get("note") else "") for c in changes) or "no visible change"


def agrees(label: dict, changes: list[dict] | None) -> bool | None:
    """Whether a latent's effect includes its label's value (None when it has no label or no effect label)."""
    if changes is None or not label.get("factor"):
        return None
    return any(c["factor"] == label["factor"] and c["value"] == label["value"] for c in changes)
