"""The map of all latents: UMAP keeps cosine neighbours together, is reproducible, and a bundle checks what it reads."""

import numpy as np
import pytest
import torch

from backend.errors import ExplorerError
from backend.io import write_safetensors
from backend.serving.bundle import MAP_FILE, Bundle, rewrite_manifest
from backend.serving.latent_map import latent_map
from tests.test_bundle import make_bundle


def planted_groups(seed=0, groups=4, per_group=30, dim=64):
    """Vectors around `groups` random directions, each scaled at random: the groups differ by direction only."""
    rng = np.random.default_rng(seed)
    centres = rng.normal(size=(groups, dim))
    labels = np.repeat(np.arange(groups), per_group)
    vectors = centres[labels] + 0.3 * rng.normal(size=(len(labels), dim))
    return vectors * rng.uniform(0.1, 10.0, size=(len(labels), 1)), labels


def test_latents_that_point_the_same_way_land_together():
    vectors, labels = planted_groups()
    xy = latent_map(vectors)
    assert xy.shape == (len(vectors), 2) and xy.dtype == np.float32
    distances = np.linalg.norm(xy[:, None] - xy[None], axis=-1)
    np.fill_diagonal(distances, np.inf)
    nearest = distances.argmin(1)
    assert (labels[nearest] == labels).mean() >= 0.95  # scale differs within a group: cosine, not Euclidean, decides


def test_the_same_seed_draws_the_same_map():
    vectors, _ = planted_groups(seed=1)
    assert np.array_equal(latent_map(vectors, seed=3), latent_map(vectors, seed=3))


def test_too_few_latents_is_a_clear_error():
    with pytest.raises(ValueError, match="at least 4"):
        latent_map(np.ones((3, 8)))


def test_a_bundle_without_a_map_says_how_to_draw_one(tmp_path):
    with pytest.raises(ExplorerError, match="--stages index"):
        make_bundle(tmp_path).latent_map


def test_a_map_of_the_wrong_shape_is_refused_with_its_file_name(tmp_path):
    make_bundle(tmp_path)
    write_safetensors(tmp_path / MAP_FILE, {"xy": torch.zeros(15, 2)})  # the bundle has 16 latents
    rewrite_manifest(tmp_path)
    with pytest.raises(ExplorerError, match=MAP_FILE):
        Bundle.load(tmp_path).latent_map
    write_safetensors(tmp_path / MAP_FILE, {"xy": torch.full((16, 2), float("nan"))})
    rewrite_manifest(tmp_path)
    with pytest.raises(ExplorerError, match="finite"):
        Bundle.load(tmp_path).latent_map
