"""Seeded examples and training batches of the shapes world."""

import numpy as np
import torch
from PIL import Image

from backend.shapes.captions import make_caption
from backend.shapes.render import render


def make_example(seed: int, size: int = 32, split: str = "train") -> tuple[Image.Image, str, dict[str, str]]:
    """Image, caption and factors of `seed`; deterministic."""
    image, factors = render(seed, size, split)
    caption = make_caption(factors, np.random.default_rng([seed, 1]))  # own stream: captions never move pixels
    return image, caption, factors.as_dict()


def to_tensor(images: list[Image.Image]) -> torch.Tensor:
    """PIL images as a float batch in [-1, 1]: [B, 3, H, W]."""
    array = np.stack([np.asarray(im, dtype=np.float32) for im in images])
    return torch.from_numpy(array).permute(0, 3, 1, 2) / 127.5 - 1.0


def training_batch(step: int, batch_size: int, data_seed: int, caption_dropout: float, size: int = 32) -> tuple[torch.Tensor, list[str]]:
    """Batch number `step` of the training stream: pure function of its arguments, so resuming is exact."""
    seeds = [data_seed * 1_000_000_000_000 + step * batch_size + i for i in range(batch_size)]
    examples = [make_example(seed, size) for seed in seeds]
    drop = np.random.default_rng([data_seed, step, 2]).random(batch_size) < caption_dropout
    captions = ["" if d else caption for (_, caption, _), d in zip(examples, drop)]
    return to_tensor([image for image, _, _ in examples]), captions
