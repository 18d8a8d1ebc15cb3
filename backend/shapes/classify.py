"""Read the factors back from a shapes image: analytic colour, background, position and size; a small CNN for shape.

Pipeline per image: the background is the per-channel median (an object covers under a third of the
image); the object colour is the mean of the pixels farthest from it; a soft mask (each pixel's
share of object colour, so antialiased edges count fractionally) gives area and centroid; the mask,
cropped around the centroid and scaled by sqrt(area), goes to the CNN, which so sees shape alone.

`python -m backend.shapes.classify --train` fits the CNN on rendered images;
`python -m backend.shapes.classify --validate` reports accuracy per factor.
"""

import argparse
import logging
import math
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from safetensors.torch import load_file
from torch import Tensor, nn

from backend.io import write_safetensors
from backend.shapes.render import BACKGROUNDS, COLOURS, FACTOR_NAMES, POSITIONS, SHAPES, SIZES, render, shape_area

log = logging.getLogger(__name__)

WEIGHTS = Path(__file__).with_name("shape_cnn.safetensors")
CROP = 24  # side of the normalized mask the CNN reads
CROP_SCALE = 1.1  # crop half-side in units of sqrt(area): covers the farthest star tip (0.85)
CORE = 0.7  # pixels this close to the farthest one (in distance from background) define the object colour
MIN_ALPHA = 0.1  # mask values below this are noise, not object

_PALETTE = torch.tensor(list(COLOURS.values()), dtype=torch.float32) / 255  # [C, 3]
_BACKDROPS = torch.tensor(list(BACKGROUNDS.values()), dtype=torch.float32) / 255  # [G, 3]
# Diameter (fraction of the side) at each size class; boundaries at geometric means between classes.
_SIZE_BOUNDS = [math.sqrt(a * b) for a, b in zip(list(SIZES.values()), list(SIZES.values())[1:])]


class ShapeCNN(nn.Module):
    """Shape from a size-normalized mask: [B, 1, 24, 24] -> logits [B, len(SHAPES)]."""

    def __init__(self):
        super().__init__()
        self.features = nn.Sequential(
            nn.Conv2d(1, 16, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),  # 12
            nn.Conv2d(16, 32, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),  # 6
            nn.Conv2d(32, 64, 3, padding=1), nn.ReLU(), nn.AdaptiveAvgPool2d(1),
        )
        self.head = nn.Linear(64, len(SHAPES))

    def forward(self, mask: Tensor) -> Tensor:
        return self.head(self.features(mask).flatten(1))


def analyse(images: Tensor) -> dict[str, Tensor]:
    """Background, object colour, soft mask, area and centroid of images [B, 3, H, W] in [0, 1]."""
    b, _, h, w = images.shape
    pixels = images.flatten(2)  # [B, 3, HW]
    background = pixels.median(dim=2).values  # [B, 3]
    offset = pixels - background[:, :, None]
    dist = offset.norm(dim=1)  # [B, HW]
    core = dist >= CORE * dist.max(dim=1, keepdim=True).values
    colour = (pixels * core[:, None]).sum(2) / core.sum(1, keepdim=True)  # [B, 3]
    direction = colour - background
    alpha = (offset * direction[:, :, None]).sum(1) / direction.pow(2).sum(1, keepdim=True).clamp_min(1e-6)
    alpha = alpha.clamp(0, 1)
    alpha = torch.where(alpha < MIN_ALPHA, torch.zeros_like(alpha), alpha).view(b, h, w)
    area = alpha.sum((1, 2)).clamp_min(1e-6)  # in pixels
    ys = (torch.arange(h, dtype=torch.float32) + 0.5) / h
    xs = (torch.arange(w, dtype=torch.float32) + 0.5) / w
    centroid = torch.stack([(alpha.sum(1) * xs).sum(1), (alpha.sum(2) * ys).sum(1)], 1) / area[:, None]  # [B, 2] (x, y)
    return {"background": background, "colour": colour, "alpha": alpha, "area": area / (h * w), "centroid": centroid}


def normalized_masks(alpha: Tensor, area: Tensor, centroid: Tensor) -> Tensor:
    """Masks cropped around the centroid with half-side CROP_SCALE * sqrt(area): [B, 1, CROP, CROP]."""
    half = CROP_SCALE * area.sqrt() * 2  # in grid_sample units, where the image spans [-1, 1]
    theta = torch.zeros(len(alpha), 2, 3)
    theta[:, 0, 0] = theta[:, 1, 1] = half
    theta[:, :, 2] = centroid * 2 - 1
    grid = F.affine_grid(theta, (len(alpha), 1, CROP, CROP), align_corners=False)
    return F.grid_sample(alpha[:, None], grid, align_corners=False)


def _nearest(values: Tensor, table: Tensor) -> Tensor:
    return torch.cdist(values, table).argmin(1)


def _position(centroid: Tensor) -> list[str]:
    # Object centres sit at 1/4, 1/2, 3/4 of the side; cells split halfway between them.
    bounds = torch.tensor([0.375, 0.625])
    col = torch.bucketize(centroid[:, 0].contiguous(), bounds)
    row = torch.bucketize(centroid[:, 1].contiguous(), bounds)
    lookup = {(round(x * 4) - 1, round(y * 4) - 1): name for name, (x, y) in POSITIONS.items()}
    return [lookup[(c, r)] for c, r in zip(col.tolist(), row.tolist())]


class FactorClassifier:
    """Predict the factors of shapes images."""

    def __init__(self, cnn: ShapeCNN):
        self.cnn = cnn.eval()

    @torch.no_grad()
    def predict(self, images: Tensor) -> list[dict[str, str]]:
        """Factors of images [B, 3, H, W] in [0, 1], as dicts keyed by FACTOR_NAMES."""
        parts = analyse(images.float().cpu())
        shapes = self.cnn(normalized_masks(parts["alpha"], parts["area"], parts["centroid"])).argmax(1).tolist()
        colours = _nearest(parts["colour"], _PALETTE).tolist()
        backgrounds = _nearest(parts["background"], _BACKDROPS).tolist()
        positions = _position(parts["centroid"])
        results = []
        for i, shape_index in enumerate(shapes):
            shape = SHAPES[shape_index]
            diameter = 2 * math.sqrt(parts["area"][i].item() / shape_area(shape, 1.0))
            size = list(SIZES)[int(np.searchsorted(_SIZE_BOUNDS, diameter))]
            results.append({"shape": shape, "colour": list(COLOURS)[colours[i]], "size": size,
                            "position": positions[i], "background": list(BACKGROUNDS)[backgrounds[i]]})
        return results


def flooded(images: Tensor) -> list[str | None]:
    """Per image [B, 3, H, W] in [0, 1]: the object colour that fills it, or None.

    An image is filled with a colour when its background (the median pixel) is nearer to an
    object colour than to every background colour: no shapes image looks like that, so the
    classifier's other readings of it (an "object" left over from the old background) mean nothing.
    """
    background = analyse(images.float().cpu())["background"]
    to_object = torch.cdist(background, _PALETTE).min(1)
    to_backdrop = torch.cdist(background, _BACKDROPS).min(1).values
    return [list(COLOURS)[i] if near < far else None for i, near, far in zip(to_object.indices.tolist(), to_object.values, to_backdrop)]


def load_classifier(path: Path = WEIGHTS) -> FactorClassifier:
    """The classifier with the shipped CNN weights."""
    if not Path(path).is_file():
        raise FileNotFoundError(f"{path} is missing; run `python -m backend.shapes.classify --train`.")
    cnn = ShapeCNN()
    cnn.load_state_dict(load_file(str(path)))
    return FactorClassifier(cnn)


def rendered_batch(seeds: range, size: int = 32, noise: float = 0.0) -> tuple[Tensor, list[dict[str, str]]]:
    """Rendered images [B, 3, size, size] in [0, 1] (all colour x shape pairs) with their factors."""
    images, factors = [], []
    for seed in seeds:
        image, f = render(seed, size, split="all")
        images.append(np.asarray(image, dtype=np.float32) / 255)
        factors.append(f.as_dict())
    batch = torch.from_numpy(np.stack(images)).permute(0, 3, 1, 2)
    if noise:  # generated images are never as clean as rendered ones
        gen = torch.Generator().manual_seed(seeds.start)
        batch = (batch + noise * torch.rand(len(batch), 1, 1, 1, generator=gen) * torch.randn(batch.shape, generator=gen)).clamp(0, 1)
    return batch, factors


def train_cnn(n_images: int = 30_000, epochs: int = 6, seed_offset: int = 10**9) -> ShapeCNN:
    """Fit the shape CNN on masks of rendered, lightly noised images (seeds disjoint from validation)."""
    torch.manual_seed(0)
    images, factors = rendered_batch(range(seed_offset, seed_offset + n_images), noise=0.04)
    parts = analyse(images)
    masks = normalized_masks(parts["alpha"], parts["area"], parts["centroid"])
    labels = torch.tensor([SHAPES.index(f["shape"]) for f in factors])
    cnn = ShapeCNN()
    optimizer = torch.optim.AdamW(cnn.parameters(), lr=3e-3)
    steps = epochs * (n_images // 128)
    schedule = torch.optim.lr_scheduler.OneCycleLR(optimizer, max_lr=3e-3, total_steps=steps)
    for epoch in range(epochs):
        order = torch.randperm(n_images)
        for start in range(0, n_images - 127, 128):
            idx = order[start:start + 128]
            loss = F.cross_entropy(cnn(masks[idx]), labels[idx])
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
            schedule.step()
        log.info("epoch %d loss %.4f", epoch, loss.item())
    return cnn.eval()


def validate(classifier: FactorClassifier, n_images: int = 2000, noise: float = 0.0) -> dict[str, float]:
    """Accuracy per factor on freshly rendered images."""
    images, factors = rendered_batch(range(n_images), noise=noise)
    predicted = classifier.predict(images)
    return {name: float(np.mean([f[name] == p[name] for f, p in zip(factors, predicted)])) for name in FACTOR_NAMES}


def main(argv: list[str] | None = None) -> None:
    """Entry point of `python -m backend.shapes.classify`."""
    parser = argparse.ArgumentParser(prog="python -m backend.shapes.classify", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--train", action="store_true", help=f"fit the shape CNN and write {WEIGHTS.name}")
    parser.add_argument("--validate", action="store_true", help="report accuracy per factor on rendered images")
    parser.add_argument("--images", type=int, default=2000, help="validation images")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(message)s")
    if args.train:
        write_safetensors(WEIGHTS, train_cnn().state_dict())
        log.info("wrote %s", WEIGHTS)
    if args.validate:
        classifier = load_classifier()
        for noise in (0.0, 0.05):
            accuracy = validate(classifier, args.images, noise)
            log.info("noise %.2f: %s", noise, " ".join(f"{k}={v:.3f}" for k, v in accuracy.items()))


if __name__ == "__main__":
    main()
