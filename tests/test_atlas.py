import pytest
import torch

from backend.serving.atlas import AtlasAccumulator, image_spread, label_latents, label_precision, temporal_profiles


def test_streamed_atlas_equals_brute_force_over_all_images():
    g = torch.Generator().manual_seed(0)
    codes = torch.rand(30, 9, 12, generator=g) * (torch.rand(30, 9, 12, generator=g) > 0.7)  # [images, positions, latents]
    acc = AtlasAccumulator(n_latents=12, n_images=30, positions=9, top_n=5)
    for start in range(0, 30, 7):
        acc.update(torch.arange(start, min(start + 7, 30)), codes[start : start + 7])
    atlas = acc.finish()
    image_max = codes.amax(1)  # [images, latents]
    assert torch.equal(atlas["image_profile"], image_max)
    assert torch.equal(atlas["top_image_score"], image_max.T.topk(5, dim=1).values)
    best_image = atlas["top_image_id"][:, 0]
    assert torch.equal(atlas["top_image_map"][:, 0], codes[best_image, :, torch.arange(12)])
    flat = codes.permute(2, 0, 1).reshape(12, -1)
    assert torch.equal(atlas["top_patch_score"], flat.topk(5, dim=1).values)
    top = flat.argmax(1)
    assert torch.equal(atlas["top_patch_image"][:, 0], top // 9) and torch.equal(atlas["top_patch_position"][:, 0], top % 9)
    assert torch.allclose(atlas["frequency"], (codes > 0).float().mean((0, 1)))
    assert torch.equal(atlas["histogram"].sum(1), (image_max > 0).sum(0))


def test_spread_and_precision_from_the_atlas_equal_their_direct_reading_of_every_images_codes():
    g = torch.Generator().manual_seed(1)
    codes = torch.rand(30, 9, 6, generator=g) * (torch.rand(30, 9, 6, generator=g) > torch.linspace(0.2, 0.95, 6))  # sparser to the right
    codes[:, :, 5] = 0
    codes[3, 4, 5] = 2.0  # latent 5 fires once: one position of one image
    acc = AtlasAccumulator(n_latents=6, n_images=30, positions=9, top_n=5)
    acc.update(torch.arange(30), codes)
    atlas = acc.finish()
    spread = image_spread(atlas["frequency"], atlas["histogram"], 30)
    for j in range(6):  # the mean over the images where j fires of the share of their positions where it does
        shares = [float((codes[i, :, j] > 0).float().mean()) for i in range(30) if (codes[i, :, j] > 0).any()]
        assert float(spread[j]) == pytest.approx(sum(shares) / len(shares), abs=1e-6)
    assert float(spread[5]) == pytest.approx(1 / 9)
    factors = [{"colour": "red" if i % 3 == 0 else "blue"} | ({"shape": "star"} if i < 20 else {}) for i in range(30)]
    labels = [{"factor": "colour", "value": "red"}, {"factor": "shape", "value": "star"}, {"factor": None}, {}, {"factor": "colour", "value": "blue"},
              {"factor": "colour", "value": "red"}]
    precision = label_precision(atlas["image_profile"], factors, labels)
    for j, label in enumerate(labels):
        if not label.get("factor"):
            assert precision[j] == 0.0
            continue
        on_value = sum(float(codes[i, :, j].max()) for i in range(30) if factors[i].get(label["factor"]) == label["value"])
        named = sum(float(codes[i, :, j].max()) for i in range(30) if label["factor"] in factors[i])
        assert float(precision[j]) == pytest.approx(on_value / named, abs=1e-6)
    assert precision[5] == 1.0 and 0 < precision[0] < 1


def test_labels_pick_the_most_enriched_factor_value():
    factors = [{"colour": "red" if i < 10 else "blue", "shape": "circle"} for i in range(40)]
    top_ids = torch.tensor([[0, 1, 2, 3], [10, 11, 12, 13]])
    labels = label_latents(top_ids, torch.ones(2, 4), factors)
    assert labels[0]["factor"] == "colour" and labels[0]["value"] == "red" and labels[0]["purity"] == 1.0
    assert labels[0]["enrichment"] == 1.0 - 10 / 40
    assert labels[1]["value"] == "blue" and labels[1]["enrichment"] == 1.0 - 30 / 40  # "circle" is everywhere: never a label


def test_chance_level_enrichment_leaves_a_latent_unlabelled():
    factors = [{"colour": ("red", "blue", "green", "white")[i % 4]} for i in range(40)]
    top_ids = torch.tensor([[0, 1, 2, 4]])  # red twice in four: 0.5 purity, 0.25 over the base rate
    assert label_latents(top_ids, torch.ones(1, 4), factors, min_enrichment=0.3)[0]["factor"] is None
    assert label_latents(top_ids, torch.ones(1, 4), factors, min_enrichment=0.25)[0]["value"] == "red"


def test_a_latent_planted_mid_schedule_peaks_mid_schedule_relative_to_the_activation_scale():
    scale = torch.tensor([10.0, 5.0, 2.0, 1.5, 1.0])  # √E‖a_t‖² falls over the schedule, as at up_ft1
    raw = torch.tensor([4.0, 3.0, 2.0, 0.6, 0.2])  # ‖φ_t‖ in activation units: largest at step 0
    direction = torch.nn.functional.normalize(torch.randn(5, 8, generator=torch.Generator().manual_seed(0)), dim=1)
    phi = (raw[:, None] * direction)[None]  # [1, T, C]
    injected = phi.clone()
    injected[0, 1:] *= 0.5  # half of each later step is written by its own block
    profiles = temporal_profiles(phi, injected, scale)
    assert int(phi.norm(dim=2).argmax()) == 0
    assert profiles.peak_index.tolist() == [2]
    assert torch.allclose(profiles.trajectory[0], torch.tensor([0.4, 0.6, 1.0, 0.4, 0.2]))
    assert torch.allclose(profiles.injected[0], torch.tensor([0.4, 0.3, 0.5, 0.2, 0.1]))
    energy = (raw / scale).pow(2)  # in the relative units the profile is shown in
    assert torch.allclose(profiles.residual_share, (energy[0] + 0.25 * energy[1:].sum()) / energy.sum())
