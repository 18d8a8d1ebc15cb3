"""The shapes world: deterministic renders, captions that parse back to their factors, held-out pairs."""

import numpy as np
import pytest

from backend.shapes.captions import (
    MAX_TOKENS,
    build_tokenizer,
    canonical_caption,
    make_caption,
    parse_caption,
)
from backend.shapes.dataset import make_example, training_batch
from backend.shapes.render import FACTOR_NAMES, FACTOR_VALUES, HELD_OUT_PAIRS, Factors, render, sample_factors

SEEDS = range(1500)


def test_render_is_deterministic_from_seed():
    for seed in (0, 7, 123456):
        (a, fa), (b, fb) = render(seed), render(seed)
        assert fa == fb
        assert np.array_equal(np.asarray(a), np.asarray(b))
    assert make_example(5)[1] == make_example(5)[1]


def test_different_seeds_give_different_images():
    images = {np.asarray(render(seed)[0]).tobytes() for seed in range(50)}
    assert len(images) == 50


@pytest.mark.parametrize("size", [32, 64])
def test_render_size(size):
    image, _ = render(0, size=size)
    assert image.size == (size, size) and image.mode == "RGB"


def test_caption_parses_back_to_the_factors_it_mentions():
    for seed in SEEDS:
        _, caption, factors = make_example(seed)
        parsed = parse_caption(caption)
        assert {"shape", "colour", "position"} <= parsed.keys(), caption
        assert all(factors[name] == value for name, value in parsed.items()), (caption, factors, parsed)


def test_canonical_caption_names_every_factor():
    rng = np.random.default_rng(0)
    for _ in range(300):
        factors = sample_factors(rng, "all")
        assert parse_caption(canonical_caption(factors)) == factors.as_dict()


def test_captions_use_several_templates():
    rng = np.random.default_rng(0)
    factors = Factors("star", "red", "large", "top left", "black")
    assert len({make_caption(factors, rng) for _ in range(200)}) >= 10


def test_every_caption_word_is_one_token_and_fits():
    tokenizer = build_tokenizer()
    for seed in SEEDS:
        caption = make_example(seed)[1]
        ids = tokenizer(caption).input_ids
        words = caption.replace(",", " ,").split()
        assert len(ids) == len(words) + 2, caption
        assert len(ids) <= MAX_TOKENS
    longest = "there is a large purple triangle in the bottom right corner against a dark green background"
    assert len(tokenizer(longest).input_ids) <= MAX_TOKENS


def test_training_split_never_draws_held_out_pairs():
    rng = np.random.default_rng(0)
    pairs = {(f.colour, f.shape) for f in (sample_factors(rng, "train") for _ in range(20000))}
    assert not pairs & HELD_OUT_PAIRS
    assert len(pairs) == len(FACTOR_VALUES["colour"]) * len(FACTOR_VALUES["shape"]) - len(HELD_OUT_PAIRS)
    for seed in SEEDS:
        factors = make_example(seed)[2]
        assert (factors["colour"], factors["shape"]) not in HELD_OUT_PAIRS


def test_held_out_split_draws_only_held_out_pairs():
    rng = np.random.default_rng(0)
    pairs = {(f.colour, f.shape) for f in (sample_factors(rng, "held_out") for _ in range(500))}
    assert pairs == HELD_OUT_PAIRS


def test_all_factor_values_occur():
    rng = np.random.default_rng(1)
    drawn = [sample_factors(rng, "all") for _ in range(3000)]
    for name in FACTOR_NAMES:
        assert {getattr(f, name) for f in drawn} == set(FACTOR_VALUES[name])


def test_training_batch_is_a_pure_function_of_its_step():
    a_images, a_captions = training_batch(3, 8, data_seed=0, caption_dropout=0.5)
    b_images, b_captions = training_batch(3, 8, data_seed=0, caption_dropout=0.5)
    c_images, _ = training_batch(4, 8, data_seed=0, caption_dropout=0.5)
    assert a_captions == b_captions and "" in a_captions
    assert a_images.equal(b_images) and not a_images.equal(c_images)
    assert a_images.shape == (8, 3, 32, 32) and a_images.min() >= -1 and a_images.max() <= 1


def test_position_captions_name_the_position_alone():
    tokenizer = build_tokenizer()
    for seed in range(300):
        _, caption, factors = make_example(seed, position_only=True)
        assert parse_caption(caption) == {"position": factors["position"]}, caption
        assert tokenizer.unk_token_id not in tokenizer(caption).input_ids[1:-1]  # (CLIP's unknown token is its end token)


def test_position_caption_share_replaces_that_share_of_captions_and_no_pixels():
    full_images, full = training_batch(2, 400, data_seed=0, caption_dropout=0.0)
    images, captions = training_batch(2, 400, data_seed=0, caption_dropout=0.0, position_caption_share=0.3)
    assert images.equal(full_images)
    short = [c for c, f in zip(captions, full) if c != f]
    assert 0.22 <= len(short) / len(captions) <= 0.38
    assert all(parse_caption(c).keys() == {"position"} for c in short)
    assert training_batch(2, 400, data_seed=0, caption_dropout=0.0, position_caption_share=0.3)[1] == captions
