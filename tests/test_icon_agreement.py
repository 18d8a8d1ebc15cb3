"""The icon agreement measure (backend/evaluation/icons.py) against icons whose factors are known."""

from types import SimpleNamespace

import torch

from backend.evaluation.icons import icon_agreement, table
from backend.serving.icons import FeatureIcons, IconSettings
from backend.shapes.classify import load_classifier, rendered_batch


def test_agreement_counts_the_icons_that_show_the_labelled_value():
    classifier = load_classifier()
    images, factors = rendered_batch(range(8))
    assert classifier.predict(images) == factors  # clean renders: the classifier reads them all (precondition)
    pixels = (images * 255).round().to(torch.uint8).permute(0, 2, 3, 1)
    # latent j: its own render at strength 1, the next latent's at strength 2; latent 7 is dead
    icons = torch.stack([pixels, pixels.roll(-1, 0)], 1)
    drawn = torch.arange(8) < 7
    labels = [{"factor": "colour", "value": f["colour"], "purity": 1.0} for f in factors[:4]]
    labels += [{"factor": "shape", "value": f["shape"], "purity": 1.0} for f in factors[4:]]
    bundle = SimpleNamespace(labels=labels, icons=FeatureIcons(IconSettings("", 0, (1.0, 2.0)), pixels[0], icons, drawn))
    result = icon_agreement(bundle, classifier)
    colour_next = sum(factors[j + 1]["colour"] == factors[j]["colour"] for j in range(4)) / 4
    shape_next = sum(factors[j + 1]["shape"] == factors[j]["shape"] for j in range(4, 7)) / 3
    assert result["colour"] == {"latents": 4, "baseline": sum(f["colour"] == factors[0]["colour"] for f in factors[:4]) / 4,
                                "shows_label": {"1": 1.0, "2": colour_next}}
    assert result["shape"]["latents"] == 3 and result["shape"]["shows_label"] == {"1": 1.0, "2": shape_next}
    assert result["shape"]["baseline"] == sum(f["shape"] == factors[0]["shape"] for f in factors[4:7]) / 3
    assert table(result).splitlines()[0] == "| factor | latents | unsteered | α = 1 | α = 2 |"
