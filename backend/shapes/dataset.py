"""Seeded examples and training batches of the shapes world."""

import numpy as np
import torch
from PIL import Image

from backend.shapes.captions import make_caption, position_caption
from backend.shapes.render import render


def make_example(seed: int, size: int = 32, split: str = "train", position_only: bool = False) -> tuple[Image.Image, str, dict[str, str]]:
    """Image, caption and factors of `seed`; deterministic. `position_only`: the caption names only the position."""
    image, factors = render(seed, size, split)
    rng = np.random.default_rng([seed, 1])  # own stream: captions never move pixels
    caption = position_caption(factors, rng) if position_only else make_caption(factors, rng)
    return image, caption, factors.as_dict()


def to_tensor(images: list[Image.Image]) -> torch.Tensor:
    """PIL images as a float batch in [-1, 1]: [B, 3, H, W]."""
    array = np.stack([np.asarray(im, dtype=np.float32) for im in images])
    return torch.from_numpy(array).permute(0, 3, 1, 2) / 127.5 - 1.0


def training_batch(step: int, batch_size: int, data_seed: int, caption_dropout: float, size: int = 32,
                   position_caption_share: float = 0.0) -> tuple[torch.Tensor, list[str]]:
    """Batch number `step` of the training stream: pure function of its arguments, so resuming is exact."""
    seeds = [data_seed * 1_000_000_000_000 + step * batch_size + i for i in range(batch_size)]
    position_only = np.random.default_rng([data_seed, step, 3]).random(batch_size) < position_caption_share
    examples = [make_example(seed, size, position_only=p) for seed, p in zip(seeds, position_only)]
    drop = np.random.default_rng([data_seed, step, 2]).random(batch_size) < caption_dropout
    captions = ["" if d else caption for (_, caption, _), d in zip(examples, drop)]
    return to_tensor([image for image, _, _ in examples]), captions
