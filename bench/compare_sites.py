"""Compare demo bundles built at different UNet sites: reconstruction, labels, and colour steering.

For each bundle: SAE FVU (its input space, from the build), dead latents, share of latents
with a ground-truth label and their mean purity, and steering success: the purest latent
labelled with a colour, added at `--alpha` times its typical activation to images of another
colour, counts as a success when the factor classifier no longer reads the original colour.
Usage: python bench/compare_sites.py BUNDLE [BUNDLE ...] [--model checkpoints/shapes-model] [--alpha 10]
"""

import argparse
import statistics
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from backend.bundle import Bundle  # noqa: E402
from backend.models import load_model  # noqa: E402
from backend.shapes.classify import load_classifier  # noqa: E402
from backend.steering import Steer  # noqa: E402
from bench.common import device_name  # noqa: E402

PAIRS = (("red", "green"), ("blue", "yellow"), ("yellow", "blue"), ("green", "red"))  # (steer towards, images of)


def purest(bundle: Bundle, colour: str) -> int | None:
    """The latent labelled `colour` with the highest purity."""
    candidates = [j for j, label in enumerate(bundle.labels) if label.get("factor") == "colour" and label["value"] == colour]
    return max(candidates, key=lambda j: bundle.labels[j]["purity"], default=None)


def steering_success(bundle: Bundle, classifier, alpha: float, images_per_pair: int) -> float:
    """Share of steered images whose classified colour left the original one."""
    outcomes = []
    for target, source in PAIRS:
        latent = purest(bundle, target)
        if latent is None:
            continue
        images = [im for im in bundle.images if im.get("factors", {}).get("colour") == source][:images_per_pair]
        for image in images:
            result = bundle.generate(image["prompt"], image["seed"], [Steer(latent, alpha, "add")])
            base, steered = classifier.predict(torch.cat([result.base_run.result.images, result.steered_images]))
            if base["colour"] == source:
                outcomes.append(steered["colour"] != source)
    return sum(outcomes) / max(1, len(outcomes))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("bundles", nargs="+")
    parser.add_argument("--model", default="checkpoints/shapes-model")
    parser.add_argument("--alpha", type=float, default=10.0)
    parser.add_argument("--images-per-pair", type=int, default=3)
    args = parser.parse_args()
    model, classifier = load_model(args.model, device="cpu"), load_classifier()
    print(f"device: {device_name()}; steering: add α = {args.alpha} × s_j, {args.images_per_pair} images per colour pair")
    print(f"{'site':<8} {'grid':>6} {'d_in':>6} {'images':>6} {'SAE FVU':>8} {'dead':>5} {'labelled':>9} {'purity':>7} {'steer ok':>9}")
    for path in args.bundles:
        bundle = Bundle.load(path)
        bundle.attach_model(model)
        labelled = [label["purity"] for label in bundle.labels if label.get("factor")]
        grid = "x".join(map(str, bundle.manifest["shapes"]["grid"]))
        print(f"{bundle.manifest['site']:<8} {grid:>6} {bundle.sae.d_in:>6} {len(bundle.images):>6} "
              f"{bundle.manifest['build']['final_fvu']:>8.3f} {int((bundle.atlas['frequency'] == 0).sum()):>5} "
              f"{len(labelled) / bundle.n_latents:>9.2f} {statistics.mean(labelled):>7.2f} "
              f"{steering_success(bundle, classifier, args.alpha, args.images_per_pair):>9.2f}")


if __name__ == "__main__":
    main()
