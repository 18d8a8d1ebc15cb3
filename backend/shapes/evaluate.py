"""Score an exported shapes model: a sample grid, and factor accuracies of its images by the classifier.

`python -m backend.shapes.evaluate <export dir>` writes grid.png and metrics.json into that directory.
"""

import argparse
import logging
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw

from backend.diffusion.models import DiffusionModel, load_model
from backend.diffusion.sampler import sample, to_pil
from backend.io import write_json
from backend.shapes.captions import canonical_caption
from backend.shapes.render import FACTOR_NAMES, Factors, sample_factors

log = logging.getLogger(__name__)

GRID_CAPTIONS = (
    "a large red circle in the top left on a black background",
    "a small blue square at the bottom on a gray background",
    "a medium yellow star in the center on a dark blue background",
    "a large white ring on the right on a dark green background",
    "a medium green cross at the bottom right on a black background",
    "an orange triangle at the top, gray background",
    "a large red triangle in the center on a black background",  # held-out pair
    "a medium blue ring in the bottom left on a gray background",  # held-out pair
)
GRID_SEEDS = (0, 1, 2, 3)
NUM_STEPS = 20
GUIDANCE = 4.0
EVAL_SEED = 12345


def sample_grid(model: DiffusionModel, captions=GRID_CAPTIONS, seeds=GRID_SEEDS, scale: int = 3) -> Image.Image:
    """One row per caption (its text above), one column per seed; images upscaled `scale` times."""
    prompts = [c for c in captions for _ in seeds]
    images = to_pil(sample(model, prompts, seed=list(seeds) * len(captions), num_steps=NUM_STEPS, guidance_scale=GUIDANCE).images)
    side, label = images[0].width * scale, 12
    grid = Image.new("RGB", (side * len(seeds), (side + label) * len(captions)), (255, 255, 255))
    draw = ImageDraw.Draw(grid)
    for row, caption in enumerate(captions):
        top = row * (side + label)
        draw.text((2, top), caption, fill=(0, 0, 0))
        for col in range(len(seeds)):
            grid.paste(images[row * len(seeds) + col].resize((side, side), Image.Resampling.NEAREST), (col * side, top + label))
    return grid


def factor_accuracy(model: DiffusionModel, classifier, n: int, split: str, seed: int = EVAL_SEED) -> dict[str, float]:
    """Share of generated images whose classified factors match their caption's, per factor."""
    rng = np.random.default_rng([seed, {"train": 0, "held_out": 1}[split]])
    factors: list[Factors] = [sample_factors(rng, split) for _ in range(n)]
    images = sample(model, [canonical_caption(f) for f in factors], seed=seed, num_steps=NUM_STEPS, guidance_scale=GUIDANCE).images
    predicted = classifier.predict(images)
    return {name: float(np.mean([getattr(f, name) == p[name] for f, p in zip(factors, predicted)])) for name in FACTOR_NAMES}


def load_classifier_or_none():
    """The factor classifier, or None (logged) while it is not available."""
    try:
        from backend.shapes.classify import load_classifier  # noqa: PLC0415  (optional: absent early in a run)

        return load_classifier()
    except (ImportError, FileNotFoundError) as err:
        log.warning("no factor classifier (%s); skipping accuracies", err)
        return None


def evaluate_export(path: Path, n_images: int = 64) -> dict:
    """Write grid.png and metrics.json for the export at `path`; return the metrics."""
    model = load_model(str(path), device="cpu")
    sample_grid(model).save(path / "grid.png")
    metrics: dict = {}
    classifier = load_classifier_or_none()
    if classifier is not None:
        metrics["train_accuracy"] = factor_accuracy(model, classifier, n_images, "train")
        metrics["held_out_accuracy"] = factor_accuracy(model, classifier, max(n_images // 2, 8), "held_out")
        for key in ("train_accuracy", "held_out_accuracy"):
            log.info("%s %s: %s", path.name, key, " ".join(f"{k}={v:.2f}" for k, v in metrics[key].items()))
    write_json(path / "metrics.json", metrics)
    log.info("evaluated %s: %s", path, path / "grid.png")
    return metrics


def main(argv: list[str] | None = None) -> None:
    """Entry point of `python -m backend.shapes.evaluate`."""
    parser = argparse.ArgumentParser(prog="python -m backend.shapes.evaluate", description=__doc__)
    parser.add_argument("export", type=Path, help="an export directory (unet/, text_encoder/, tokenizer/, scheduler/)")
    parser.add_argument("--images", type=int, default=64, help="generated images to score")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(message)s")
    evaluate_export(args.export, args.images)


if __name__ == "__main__":
    main()
