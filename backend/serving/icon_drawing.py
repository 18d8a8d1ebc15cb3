"""Drawing the feature icons (icons.py) with a bundle's generator: the build's icons stage."""

from concurrent.futures import ThreadPoolExecutor

import torch
from torch import Tensor

from backend.diffusion.collect import thumbnails
from backend.diffusion.steering import Steer
from backend.serving.batching import MAX_ROWS
from backend.serving.icons import ICON_PX, IconSettings

WORKERS = MAX_ROWS // 2  # steered runs in flight at once: as many guided runs as the batched sampler steps together


def icon_side(bundle) -> int:
    """Pixels per side of a bundle's icons: its atlas thumbnails', at most ICON_PX."""
    return min(bundle.thumbnails.shape[1], ICON_PX)


def draw_icons(generator, settings: IconSettings, latents: list[int], size: int, workers: int = WORKERS) -> Tensor:
    """uint8 Tensor[len(latents), S, size, size, 3]: latent j added at each strength (all positions, all steps).

    The runs go to the generator from `workers` threads at once, so its batched sampler steps them
    together; they share one cached base run.
    """
    def icon(j: int, strength: float) -> Tensor:
        steered = generator.generate(settings.prompt, settings.seed, [Steer(j, strength)], allow_empty=True).steered_images
        return thumbnails(steered, size)[0]

    with ThreadPoolExecutor(workers) as pool:
        rows = [[pool.submit(icon, j, a) for a in settings.strengths] for j in latents]
        return torch.stack([torch.stack([future.result() for future in row]) for row in rows])


def base_icon(generator, settings: IconSettings, size: int) -> Tensor:
    """uint8 Tensor[size, size, 3]: the neutral prompt's image with nothing steered."""
    return thumbnails(generator.base(settings.prompt, settings.seed, allow_empty=True).result.images, size)[0]
