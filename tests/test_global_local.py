"""The global_local variant: rows split into image mean and deviation, two SAEs, and a bundle that serves both kinds."""

import json

import pytest
import torch

from backend.build import Build, parse_config
from backend.errors import ExplorerError
from backend.method.dynamics import LinearDynamics
from backend.method.encodings import TrajectoryEncoding
from backend.method.global_local import GlobalLocalSAE
from backend.method.sae import TopKSAE
from backend.method.sae_train import SAETrainConfig
from backend.serving.bundle import Bundle
from tests.test_build import config, model  # noqa: F401  (the tiny model fixture)
from tests.test_dynamics import linear_trajectories

POSITIONS = 6


@pytest.fixture(scope="module")
def encoding_and_traj():
    traj, _, _ = linear_trajectories(n=12 * POSITIONS, steps=4, dim=5, noise=0.3, seed=3)
    traj = traj + torch.randn(12, 1, 5, dtype=traj.dtype).repeat_interleave(POSITIONS, 0)  # an image-wide part per image
    fitted = LinearDynamics.fit(traj, ridge=1e-3).state_dict()
    dynamics = LinearDynamics.from_state_dict({name: value.float() for name, value in fitted.items()})
    return TrajectoryEncoding("global_local", dynamics, POSITIONS), traj.float()


def sae_pair(width: int) -> GlobalLocalSAE:
    torch.manual_seed(0)
    return GlobalLocalSAE(TopKSAE(width, 16, 3), TopKSAE(width, 8, 2))


def test_rows_are_the_residualized_row_split_into_image_mean_and_deviation(encoding_and_traj):
    encoding, traj = encoding_and_traj
    rows = encoding.to_rows(traj).reshape(-1, POSITIONS, 2, encoding.d_in() // 2)
    residualized = TrajectoryEncoding("residualized", encoding.dynamics).to_rows(traj).reshape(-1, POSITIONS, encoding.d_in() // 2)
    deviation, mean = rows[:, :, 0], rows[:, :, 1]
    assert torch.allclose(mean, residualized.mean(1, keepdim=True).expand_as(mean), atol=1e-5)
    assert torch.allclose(deviation + mean, residualized, atol=1e-5)
    assert deviation.sum(1).abs().max() < 1e-4  # deviations cancel over each image
    with pytest.raises(ValueError, match="whole images"):
        encoding.to_rows(traj[: POSITIONS + 1])


def test_codes_are_each_sae_on_its_own_part_with_topk_per_kind(encoding_and_traj):
    encoding, traj = encoding_and_traj
    sae = sae_pair(encoding.d_in() // 2)
    rows = encoding.to_rows(traj)
    codes = sae.encode(rows)
    deviation, mean = rows.chunk(2, dim=1)
    assert torch.equal(codes[:, :16], sae.local.encode(deviation)) and torch.equal(codes[:, 16:], sae.image.encode(mean))
    assert ((codes[:, :16] > 0).sum(1) <= 3).all() and ((codes[:, 16:] > 0).sum(1) <= 2).all()
    image_codes = codes[:, 16:].reshape(-1, POSITIONS, 8)
    assert torch.equal(image_codes, image_codes[:, :1].expand_as(image_codes))  # one global code per image
    dense = (rows - sae.b_pre) @ sae.W_enc.T + sae.b_enc  # the block-diagonal views are the same linear maps
    assert torch.allclose(dense, sae.pre_activations(rows), atol=1e-4)
    assert torch.allclose(codes @ sae.W_dec.T + sae.b_pre, sae.decode(codes), atol=1e-5)
    assert sae.is_global().tolist() == [False] * 16 + [True] * 8


def test_a_global_latents_trajectory_is_added_at_every_position(encoding_and_traj):
    encoding, traj = encoding_and_traj
    sae = sae_pair(encoding.d_in() // 2)
    phi = encoding.feature_trajectories(sae.W_dec.detach())
    with torch.no_grad():
        codes = sae.encode(encoding.to_rows(traj[:POSITIONS]))
        more = codes.clone()
        more[:, 20] += 1.0  # global latent 4, one more unit for the image
        effect = encoding.from_rows(sae.decode(more)) - encoding.from_rows(sae.decode(codes))
    assert torch.allclose(effect, phi[20].expand_as(effect), atol=1e-4)


def test_prefix_pre_activations_end_at_the_full_encoding(encoding_and_traj):
    encoding, traj = encoding_and_traj
    sae = sae_pair(encoding.d_in() // 2)
    with torch.no_grad():
        frames = list(encoding.prefix_pre_activations(traj[:POSITIONS], sae.W_enc, sae.b_enc - sae.W_enc @ sae.b_pre))
        assert torch.allclose(frames[-1], sae.pre_activations(encoding.to_rows(traj[:POSITIONS])), atol=1e-4)


def test_save_and_load_keep_both_saes_and_refuse_a_mismatched_pair(tmp_path):
    sae = sae_pair(10)
    sae.save(tmp_path / "sae")
    loaded = GlobalLocalSAE.load(tmp_path / "sae")
    x = torch.randn(5, 20)
    assert torch.equal(loaded.encode(x), sae.encode(x).detach())
    config = json.loads((tmp_path / "sae" / "config.json").read_text())
    (tmp_path / "sae" / "config.json").write_text(json.dumps(config | {"global": {"d_in": 10, "n_latents": 9, "k": 2}}))
    with pytest.raises(ExplorerError, match="disagree"):
        GlobalLocalSAE.load(tmp_path / "sae")


@pytest.fixture(scope="module")
def built(model, tmp_path_factory):  # noqa: F811
    root = tmp_path_factory.mktemp("global_local")
    summary = Build(config(root, variant="global_local", global_latents=8, global_k=2, global_steps=30), model=model).run()
    return root, summary


def test_a_global_local_build_serves_both_kinds(built):
    tmp_path, summary = built
    bundle = Bundle.load(tmp_path / "bundle")
    assert bundle.manifest["format_version"] == 2 and bundle.manifest["sae"]["global"]["n_latents"] == 8
    assert bundle.n_latents == 40 and bundle.is_global.sum() == 8 and 0 < summary["fvu_sae_input"] < 1
    shard = next(iter(sorted((tmp_path / "bundle.work" / "collect").glob("*.safetensors"))))
    from safetensors.torch import load_file

    traj = load_file(shard)["traj"].float()[:64]  # the first image: 8×8 positions
    codes = bundle.codes(traj)
    global_codes = codes[:, bundle.is_global]
    assert torch.equal(global_codes, global_codes[:1].expand_as(global_codes))
    maps = bundle.maps_over_time(traj, list(range(bundle.n_latents)), codes)
    assert torch.equal(maps[:, -1].flatten(1).T, codes)  # the last frame is the code


def test_the_train_stage_records_the_rate_for_the_width_the_per_position_sae_reads(built):
    tmp_path, _ = built
    sae = Bundle.load(tmp_path / "bundle").sae
    rate = SAETrainConfig(n_latents=sae.local.n_latents).learning_rate
    settings = json.loads((tmp_path / "bundle.work" / "train.settings.json").read_text())
    assert settings["lr"] == rate(sae.local.d_in) != rate(sae.d_in)  # the deviations only: half the encoded row


def test_global_local_needs_every_position(capsys):
    with pytest.raises(SystemExit):
        parse_config(["--model", "m", "--out", "o", "--variant", "global_local", "--positions-per-image", "16"])
    assert "every position" in capsys.readouterr().err


def test_steering_a_global_latent_edits_every_position_whatever_the_mask():
    from backend.diffusion.steering import Steer, steering_deltas

    phi = torch.randn(3, 4, 5)  # 3 latents, 4 steps, 5 channels
    typical, codes = torch.ones(3), torch.rand(6, 3)
    region = torch.tensor([1.0, 0, 0, 0, 0, 0])
    image_wide = torch.tensor([False, False, True])
    local = steering_deltas([Steer(0, 2.0)], phi, typical, codes, region, image_wide)
    image = steering_deltas([Steer(2, 2.0)], phi, typical, codes, region, image_wide)
    assert local[:, 1:].abs().sum() == 0 and torch.allclose(local[:, 0], 2 * phi[0])
    assert torch.allclose(image, 2 * phi[2][:, None].expand(4, 6, 5))


def test_the_app_shows_a_global_latent_without_map_or_patches(built, model):  # noqa: F811
    from ui import browse
    from ui.explorer import Explorer

    bundle = Bundle.load(built[0] / "bundle")
    bundle.attach_model(model)
    ex = Explorer(bundle)
    j = next(j for j in range(32, 40) if ex.table.max_activation[j] > 0)  # a global latent that fired
    page = browse.latent_page(ex, j)
    assert "global latent" in page.header and page.top_images and page.top_patches == []
    assert ex.table.row(j)[-1] == "global" and ex.table.row(0)[-1] == "local"
    assert "no map over time" in browse.timeline_view(ex, j)[-1]
    local = next(j for j in range(32) if ex.table.max_activation[j] > 0)
    assert browse.latent_page(ex, local).top_patches  # local latents keep their patches
