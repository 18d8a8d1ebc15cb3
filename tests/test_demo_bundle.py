"""The shipped demo: its bundle loads, and steering its colour latents does what their labels say."""

from pathlib import Path

import pytest
import torch

from backend.diffusion.models import load_model
from backend.diffusion.steering import Steer
from backend.serving.bundle import Bundle

ROOT = Path(__file__).resolve().parents[1]
BUNDLE, MODEL = ROOT / "checkpoints" / "shapes-bundle", ROOT / "checkpoints" / "shapes-model"
pytestmark = pytest.mark.skipif(not BUNDLE.is_dir() or not MODEL.is_dir(), reason="the demo bundle is not in checkpoints/")


@pytest.fixture(scope="module")
def bundle():
    torch.set_num_threads(1)
    loaded = Bundle.load(BUNDLE)
    loaded.attach_model(load_model(str(MODEL), device="cpu"))
    return loaded


@pytest.fixture(scope="module")
def classifier():
    from backend.shapes.classify import load_classifier

    return load_classifier()


def test_demo_bundle_has_an_atlas_of_labelled_latents(bundle):
    assert 1000 <= bundle.n_latents <= 4096
    assert len(bundle.images) >= 2000
    factors = {label["factor"] for label in bundle.labels if label.get("factor")}
    assert "colour" in factors
    j = next(j for j, label in enumerate(bundle.labels) if label.get("factor") == "colour")
    assert j in bundle.search_latents(bundle.labels[j]["value"])


def test_adding_a_red_latent_turns_green_shapes_away_from_green(bundle, classifier):
    """Steering is causal on the shipped model: a latent labelled red, added at 10x its typical
    activation at up_ft1 over the whole run, changes the classified colour of green shapes."""
    red = max((j for j, label in enumerate(bundle.labels) if label.get("factor") == "colour" and label["value"] == "red"),
              key=lambda j: (bundle.labels[j]["purity"], -j))
    greens = [image for image in bundle.images if image.get("factors", {}).get("colour") == "green"][:4]
    moved = 0
    for image in greens:
        result = bundle.generate(image["prompt"], image["seed"], [Steer(red, 10.0, "add")])
        base, steered = classifier.predict(torch.cat([result.base_run.result.images, result.steered_images]))
        assert base["colour"] == "green"
        moved += steered["colour"] != "green"
    assert moved >= 2


def test_ablating_the_latents_labelled_green_takes_green_away(bundle, classifier):
    """Ablation is causal too: scaling to 0 every latent labelled green (over the whole run) changes the
    classified colour of at least half the green shapes, and scaling them by 1 changes nothing. One latent alone is
    not enough on this model: colour is spread over many latents (docs/SHAPES.md)."""
    from backend.evaluation.controllability import images_showing, labelled_latents

    greens = labelled_latents(bundle, "colour")["green"]
    moved = 0
    for image_id in images_showing(bundle, "colour", "green", 6):
        image = bundle.images[image_id]
        result = bundle.generate(image["prompt"], image["seed"], [Steer(j, 0.0, "scale") for j in greens])
        base, ablated = classifier.predict(torch.cat([result.base_run.result.images, result.steered_images]))
        assert base["colour"] == "green"
        moved += ablated["colour"] != "green"
        kept = bundle.generate(image["prompt"], image["seed"], [Steer(j, 1.0, "scale") for j in greens])
        assert torch.equal(kept.steered_images, result.base_run.result.images)
    assert moved >= 3


@pytest.mark.parametrize("bins, per_bin", [(4, 2), (3, 5), (1, 1)])
def test_quantile_images_come_from_each_equal_count_slice_of_the_activation_range(bundle, bins, per_bin):
    import numpy as np

    j = int(bundle.atlas["frequency"].argmax())
    activations = bundle.atlas["image_profile"][:, j].float().numpy()
    fired = np.flatnonzero(activations > 0)
    slices = np.array_split(fired[np.argsort(activations[fired], kind="stable")], bins)
    picked = bundle.quantile_images(j, bins, per_bin)
    assert [b for b, _, _ in picked] == sorted(b for b, _, _ in picked)
    for b in range(bins):
        in_bin = [(i, a) for bb, i, a in picked if bb == b]
        assert len(in_bin) == min(per_bin, len(slices[b]))
        for i, a in in_bin:
            assert activations[slices[b][0]] <= a <= activations[slices[b][-1]] and a == pytest.approx(activations[i])
    assert picked[0][2] <= picked[-1][2]


@pytest.mark.parametrize("bins, per_bin", [(0, 2), (21, 2), (4, 0), (True, 2), (4, 10**6)])
def test_bad_quantile_requests_are_explained(bundle, bins, per_bin):
    from backend.errors import ExplorerError

    with pytest.raises(ExplorerError):
        bundle.quantile_images(0, bins, per_bin)
