"""The shipped demo: its bundle loads, and steering its colour latents does what their labels say."""

from pathlib import Path

import pytest
import torch

from backend.bundle import Bundle
from backend.models import load_model
from backend.steering import Steer

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


def colour_latents(bundle, colour: str) -> list[int]:
    return [j for j, label in enumerate(bundle.labels) if label.get("factor") == "colour" and label["value"] == colour]


def test_ablating_a_colours_latents_changes_the_classified_colour(bundle, classifier):
    labelled = [label["value"] for label in bundle.labels if label.get("factor") == "colour"]
    colour = max(set(labelled), key=labelled.count)
    latents = colour_latents(bundle, colour)
    prompts = [image for image in bundle.images if image.get("factors", {}).get("colour") == colour][:6]
    kept, changed = 0, 0
    for image in prompts:
        result = bundle.generate(image["prompt"], image["seed"], [Steer(j, 0.0, "scale") for j in latents])
        base, steered = classifier.predict(torch.cat([result.base_run.result.images, result.steered_images]))
        if base["colour"] != colour:
            continue  # the model missed the colour in the first place
        kept += 1
        changed += steered["colour"] != colour
    assert kept >= 3
    assert changed / kept >= 0.5
