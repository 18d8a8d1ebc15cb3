"""Finding latents for a concept: the statistics against scipy, and Bundle.contrast on a tiny bundle."""

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from scipy import stats

from backend.errors import ExplorerError
from backend.evaluation.concepts import paired_captions
from backend.serving.contrast import MAX_PROMPTS, image_activations, rank_latents, welch_interval
from backend.shapes.render import FACTOR_VALUES


def test_the_interval_is_scipys_welch_interval():
    rng = np.random.default_rng(0)
    with_, without = rng.normal(1.0, 1.0, (7, 5)), rng.normal(0.0, 2.0, (11, 5))
    difference, low, high = welch_interval(torch.tensor(with_, dtype=torch.float32), torch.tensor(without, dtype=torch.float32))
    for j in range(5):
        expected = stats.ttest_ind(with_[:, j], without[:, j], equal_var=False).confidence_interval(0.95)
        assert difference[j] == pytest.approx(with_[:, j].mean() - without[:, j].mean(), abs=1e-5)
        assert (float(low[j]), float(high[j])) == pytest.approx((expected.low, expected.high), abs=1e-4)


def test_a_latent_constant_in_both_sets_gets_a_point_interval():
    with_, without = torch.full((3, 1), 2.0), torch.full((4, 1), 0.5)
    difference, low, high = welch_interval(with_, without)
    assert difference.item() == low.item() == high.item() == 1.5


def test_activation_is_the_peak_over_positions_in_typical_units():
    codes = torch.tensor([[0.0, 1.0, 3.0], [2.0, 0.0, 0.0]])
    activations = image_activations(codes, torch.tensor([4.0, 0.5, 0.0]))
    assert activations.tolist() == [0.5, 2.0, 0.0]  # the last latent never fired on the atlas


@settings(max_examples=30, deadline=None)
@given(st.integers(2, 6), st.integers(2, 6), st.integers(0, 2**16))
def test_ranking_is_by_difference_and_the_interval_holds_it(a, b, seed):
    g = torch.Generator().manual_seed(seed)
    with_, without = torch.rand(a, 8, generator=g), torch.rand(b, 8, generator=g)
    ranked = rank_latents(with_, without, n=8)
    differences = [row.difference for row in ranked]
    assert differences == sorted(differences, reverse=True)
    assert sorted(row.latent for row in ranked) == list(range(8))
    for row in ranked:
        assert row.low <= row.difference <= row.high
        assert row.difference == pytest.approx(row.mean_with - row.mean_without, abs=1e-6)


def test_the_same_prompts_on_both_sides_differ_by_nothing(tiny_bundle):
    ranked = tiny_bundle.contrast(["a red circle", "a blue star"], ["a red circle", "a blue star"], seeds=[0, 1], n=5)
    assert len(ranked) == 5
    for row in ranked:
        assert row.difference == 0.0 and row.mean_with == row.mean_without
        assert row.low == pytest.approx(-row.high) and row.low <= 0.0 <= row.high


def test_a_contrast_ranks_the_latents_that_fire_on_the_concept(tiny_bundle):
    """Independent check: the top latent's difference is recomputed from the base runs' codes directly."""
    with_, without = ["a red circle", "a red star"], ["a blue circle", "a blue star"]
    top = tiny_bundle.contrast(with_, without, seeds=[0, 1], n=3)[0]
    typical = float(tiny_bundle.typical_activation[top.latent])
    peak = lambda prompt, seed: float(tiny_bundle.generator.base(prompt, seed).codes[:, top.latent].max()) / typical  # noqa: E731
    mean = lambda prompts: np.mean([peak(p, s) for p in prompts for s in (0, 1)])  # noqa: E731
    assert top.difference == pytest.approx(mean(with_) - mean(without), rel=1e-4)
    assert top.difference > 0


@pytest.mark.parametrize("with_, without, seeds, message", [
    ([], ["a red circle"], [0], "at least one prompt"),
    (["a red circle"], ["a red circle"] * (MAX_PROMPTS + 1), [0], "at most"),
    (["a red circle"], ["a blue star"], [0], "two images"),
    (["a red circle"], ["a blue star"], [], "seeds"),
    (["a red circle"], ["a blue star"], [0, -1], "whole numbers"),
    (["a red circle", ""], ["a blue star"], [0, 1], "empty"),
    ("a red circle", ["a blue star"], [0, 1], "at least one prompt"),
])
def test_bad_sets_are_refused_before_any_image_is_made(tiny_bundle, with_, without, seeds, message):
    cached = len(tiny_bundle.generator.base_runs)
    with pytest.raises(ExplorerError, match=message):
        tiny_bundle.contrast(with_, without, seeds)
    assert len(tiny_bundle.generator.base_runs) == cached


def test_paired_captions_differ_only_in_the_factor():
    with_, without = paired_captions("colour", "red", 6, seed=0)
    assert len(with_) == len(without) == 6
    for a, b in zip(with_, without):
        a, b = a.split(), b.split()
        assert len(a) == len(b)
        changed = [(x, y) for x, y in zip(a, b) if x != y]
        assert changed[-1][0] == "red" and changed[-1][1] in FACTOR_VALUES["colour"]
        assert changed[:-1] in ([], [("a", "an")], [("an", "a")])  # the article may follow the colour word
