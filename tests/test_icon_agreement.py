"""The icon agreement measure (backend/evaluation/icons.py) against icons whose factors are known."""

from types import SimpleNamespace

import torch

from backend.evaluation.icons import effect_agreement, effect_labels, icon_agreement, table
from backend.serving.icons import FeatureIcons, IconSettings, effect_text
from backend.shapes.classify import flooded, load_classifier, rendered_batch
from backend.shapes.render import COLOURS


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


def test_an_effect_label_is_what_the_strongest_icon_shows_and_the_neutral_image_does_not():
    classifier = load_classifier()
    images, factors = rendered_batch(range(6))
    pixels = (images * 255).round().to(torch.uint8).permute(0, 2, 3, 1)
    # the neutral image is render 0; latent j's strongest icon is render j (latent 0's icon changes nothing); latent 5 is dead
    icons = torch.stack([pixels.roll(1, 0), pixels], 1)
    drawn = torch.arange(6) < 5
    bundle = SimpleNamespace(n_latents=6, icons=FeatureIcons(IconSettings("", 0, (1.0, 4.0)), pixels[0], icons, drawn))
    effects = effect_labels(bundle, classifier)
    assert effects[0] == [] and effects[5] is None
    for j in range(1, 5):  # independently: the factors where render j differs from render 0
        assert effects[j] == [{"factor": f, "value": v} for f, v in factors[j].items() if v != factors[0][f]]
    labels = [{"factor": "colour", "value": factors[j]["colour"]} for j in range(6)]
    agreement = effect_agreement(labels, effects)
    expected = [factors[j]["colour"] != factors[0]["colour"] for j in range(5)]  # latent 0 changes nothing: disagrees
    assert agreement == {"colour": {"latents": 5, "agree": sum(expected) / 5}}
    assert effect_text(effects[0]) == "no visible change" and effect_text(None) == ""
    assert effect_text([{"factor": "colour", "value": "red"}, {"factor": "size", "value": "large"}]) == "colour red, size large"


def test_an_icon_filled_with_one_colour_has_that_colour_as_its_effect():
    classifier = load_classifier()
    images, factors = rendered_batch(range(3))
    red = torch.tensor(COLOURS["red"], dtype=torch.float32).div(255)[:, None, None].expand(3, 32, 32)
    filled = images.clone()
    filled[1] = red  # latent 1's icon: the whole image red, as a colour latent at a high strength draws it
    filled[1, :, 12:20, 12:20] = 1.0  # with a white blob left over, which the classifier would read as the object
    assert flooded(images) == [None, None, None] and flooded(filled) == [None, "red", None]
    pixels = (filled * 255).round().to(torch.uint8).permute(0, 2, 3, 1)
    icons = torch.stack([pixels, pixels], 1)
    bundle = SimpleNamespace(n_latents=3, icons=FeatureIcons(IconSettings("", 0, (1.0, 4.0)), pixels[0], icons, torch.ones(3, dtype=torch.bool)))
    effects = effect_labels(bundle, classifier)
    assert effects[1] == [{"factor": "colour", "value": "red", "note": "fills the image"}]
    assert effect_text(effects[1]) == "colour red (fills the image)"
    assert effect_agreement([{}, {"factor": "colour", "value": "red"}, {}], effects) == {"colour": {"latents": 1, "agree": 1.0}}
