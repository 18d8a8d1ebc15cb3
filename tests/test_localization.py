"""Localization, map IoU and temporal structure on planted codes, against numbers worked out by hand."""

import pytest
import torch

from backend.evaluation.localization import DAAM_THRESHOLD, label_map_iou, localization, map_iou, object_masks, temporal_structure


def planted():
    """2 images of 8 positions; the object is position 0 in image 0 and positions 0-1 in image 1 (3 of 16: chance 3/16)."""
    masks = torch.zeros(2, 8, dtype=torch.bool)
    masks[0, 0] = masks[1, :2] = True
    codes = torch.zeros(2, 8, 4)
    codes[..., 0] = masks * 2.0  # on the object only
    codes[..., 1] = 1.0  # everywhere: image-wide
    codes[0, 7, 2] = 5.0  # background only, once
    codes[..., 3] = 7.0  # global latent: excluded from spatial measures
    return codes, masks


def test_object_mass_against_chance_per_label_group_and_image_wide_mass():
    codes, masks = planted()
    labels = [{"factor": "colour", "value": "red"}, {"factor": "background", "value": "white"}, {}, {"factor": "shape"}]
    result = localization(codes, masks, labels, torch.tensor([False, False, False, True]))
    assert result["object_share_chance"] == pytest.approx(3 / 16)
    assert result["groups"]["object"] == {"latents": 1, "median_ratio": pytest.approx(16 / 3)}  # all its mass on the object
    assert result["groups"]["background"]["median_ratio"] == pytest.approx(1.0)  # uniform: exactly chance
    assert result["groups"]["unlabelled"]["median_ratio"] == 0.0
    assert result["groups"]["position"] == {"latents": 0, "median_ratio": None}
    assert result["image_wide_latents"] == 1  # latent 1; latent 0 fires on 1/8 and 2/8 of positions; latent 3 is global
    assert result["image_wide_mass_share"] == pytest.approx(16 / (6 + 16 + 5))
    assert result["object_factors"] == {"colour": {"latents": 1, "median_ratio": pytest.approx(16 / 3)},
                                        "shape": {"latents": 0, "median_ratio": None},  # latent 3 is global
                                        "size": {"latents": 0, "median_ratio": None}}
    assert "image_wide_paired_mass_share" not in result


def test_the_image_wide_mass_of_signed_pairs_counts_only_paired_image_wide_latents():
    codes, masks = planted()
    codes = torch.cat([codes, codes[..., 1:2] * 3.0], dim=-1)  # latent 4: image-wide too, three times latent 1's mass
    labels = [{}] * 5
    paired = torch.tensor([True, False, False, True, True])  # latent 0 is paired but local, latent 3 global
    result = localization(codes, masks, labels, torch.tensor([False, False, False, True, False]), paired)
    total = 6 + 16 + 5 + 48
    assert result["image_wide_mass_share"] == pytest.approx((16 + 48) / total)
    assert result["image_wide_paired_mass_share"] == pytest.approx(48 / total)


def test_a_label_map_sums_the_local_latents_of_the_images_own_value():
    """3 images of 8 positions. Image 0 reads red: latents 0 and 1 (red) sum to 3 on the object and 1 elsewhere, so DAAM's
    cut (0.4 × 3) keeps the object alone (IoU 1), code > 0 keeps both (IoU 1/2); the global red latent 3 (7 everywhere)
    would flood it. Image 1 reads blue and its blue latent is silent (IoU 0). Image 2 reads green, which no latent carries."""
    masks = torch.zeros(3, 8, dtype=torch.bool)
    masks[0, 0] = masks[1, :2] = masks[2, 3] = True
    codes = torch.zeros(3, 8, 4)
    codes[0, 0, 0], codes[0, 0, 1], codes[0, 5, 1] = 2.0, 1.0, 1.0
    codes[2, :, 2] = 1.0
    codes[..., 3] = 7.0
    labels = [{"factor": "colour", "value": "red"}, {"factor": "colour", "value": "red"}, {"factor": "colour", "value": "blue"},
              {"factor": "colour", "value": "red"}]
    readings = [{"colour": "red"}, {"colour": "blue"}, {"colour": "green"}]
    is_global = torch.tensor([False, False, False, True])
    assert label_map_iou(codes, masks, labels, is_global, readings, "colour") == pytest.approx((1 + 0) / 2)
    assert label_map_iou(codes, masks, labels, is_global, readings, "colour", relative=0.0) == pytest.approx((0.5 + 0) / 2)
    assert label_map_iou(codes, masks, labels, torch.zeros(4, dtype=torch.bool), readings, "colour") == pytest.approx((1 / 8 + 0) / 2)
    assert label_map_iou(codes, masks, labels, is_global, [{"colour": "green"}] * 3, "colour") is None


def test_map_iou_of_a_map_that_is_the_object_is_one():
    atlas_masks = torch.tensor([[1, 1, 0, 0], [0, 0, 1, 1]], dtype=torch.bool)
    top_ids = torch.tensor([[0, 1], [1, -1]])
    maps = torch.tensor([[[2.0, 1.0, 0, 0], [0, 0, 3.0, 0]], [[1.0, 1.0, 1.0, 1.0], [0, 0, 0, 0]]])
    # latent 0: IoU 1 on image 0, 1/2 on image 1 -> 0.75; latent 1: 2/4 on image 1 -> 0.5; median of two = 0.625
    assert map_iou(top_ids, maps, atlas_masks, [0, 1]) == pytest.approx(0.625)
    assert map_iou(top_ids, maps, atlas_masks, []) is None


def test_map_iou_by_daams_rule_binarizes_each_map_at_four_tenths_of_its_maximum():
    atlas_masks = torch.tensor([[1, 1, 0, 0]], dtype=torch.bool)
    maps = torch.tensor([[[2.0, 1.0, 0.5, 0.1]]])  # above 0.4 × 2 = 0.8: positions 0 and 1, the object; above 0: all four
    assert map_iou(torch.tensor([[0]]), maps, atlas_masks, [0]) == pytest.approx(0.5)
    assert map_iou(torch.tensor([[0]]), maps, atlas_masks, [0], relative=DAAM_THRESHOLD) == pytest.approx(1.0)
    assert map_iou(torch.tensor([[0]]), maps, atlas_masks, [0], relative=0.6) == pytest.approx(0.5)  # 1.0 < 1.2: only position 0


def test_effective_steps_and_peaks_of_planted_profiles():
    profile = torch.tensor([[0.0, 0.0, 3.0, 0.0], [1.0, 1.0, 1.0, 1.0], [0.1, 0.2, 0.9, 0.3], [9.0, 0, 0, 0]])
    result = temporal_structure(profile, torch.tensor([True, True, True, False]))
    assert result["peak_step_counts"] == [1, 0, 2, 0]  # the dead latent does not count; ties go to the first step
    p = profile[2] / profile[2].sum()
    expected = torch.exp(-(p * p.log()).sum())
    assert result["effective_steps_median"] == pytest.approx(float(expected), rel=1e-6)  # median of 1, 4 and this


def test_object_masks_pool_the_classifiers_mask_to_the_grid():
    image = torch.full((1, 32, 32, 3), 255, dtype=torch.uint8)
    image[0, :16, :16] = torch.tensor([255, 0, 0], dtype=torch.uint8)  # a red square in the top-left quarter
    mask = object_masks(image, (4, 4)).reshape(4, 4)
    assert mask[:2, :2].all() and mask.sum() == 4
