"""The factor classifier reads rendered images correctly, clean and noisy."""

import numpy as np
import pytest
import torch

from backend.shapes.classify import load_classifier, validate
from backend.shapes.render import BACKGROUNDS, COLOURS, SHAPES, Factors, render, render_factors, shape_area

THRESHOLDS = {"colour": 0.98, "position": 0.98, "size": 0.98, "background": 0.98, "shape": 0.95}


@pytest.fixture(scope="module")
def classifier():
    return load_classifier()


@pytest.mark.parametrize("noise", [0.0, 0.05])
def test_classifier_reads_rendered_factors(classifier, noise):
    accuracy = validate(classifier, n_images=400, noise=noise)
    for name, threshold in THRESHOLDS.items():
        assert accuracy[name] >= threshold, (name, accuracy)


def test_classifier_reads_one_image_exactly(classifier):
    image, factors = render(42)
    batch = torch.from_numpy(np.asarray(image, dtype=np.float32) / 255).permute(2, 0, 1)[None]
    assert classifier.predict(batch)[0] == factors.as_dict()


@pytest.mark.parametrize("shape", SHAPES)
def test_shape_area_matches_rendered_pixels(shape):
    factors = Factors(shape, "white", "large", "center", "black")
    image = np.asarray(render_factors(factors, np.random.default_rng(0), size=128), dtype=np.float32)
    black, white = BACKGROUNDS["black"][0], COLOURS["white"][0]
    measured = ((image[..., 0] - black) / (white - black)).clip(0, 1).sum() / 128**2
    # the drawn diameter is jittered by up to 6%, so the area by up to ~12%
    assert measured / shape_area(shape, 0.25) == pytest.approx(1, abs=0.13)
