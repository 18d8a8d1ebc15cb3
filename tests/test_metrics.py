import numpy as np
import pytest
import torch

from backend.evaluation.metrics import factor_codes, fvu_per_step, most_active_latents, random_sigma_label, reconstruction, sigma_label
from backend.method.dynamics import LinearDynamics
from backend.method.encodings import VARIANTS, TrajectoryEncoding
from backend.method.global_local import GlobalLocalSAE
from backend.method.sae import TopKSAE
from tests.test_dynamics import linear_trajectories


@pytest.fixture(scope="module")
def dynamics_and_traj():
    traj, _, _ = linear_trajectories(n=300, steps=4, dim=6, noise=0.3, seed=3)
    return LinearDynamics.fit(traj.float(), ridge=1e-3), traj.float()


def numpy_fvu(x, x_hat):
    x, x_hat = np.asarray(x, dtype=np.float64), np.asarray(x_hat, dtype=np.float64)
    return ((x - x_hat) ** 2).sum() / ((x - x.mean(0)) ** 2).sum()


def test_fvu_per_step_matches_numpy():
    g = torch.Generator().manual_seed(0)
    traj, noise = torch.randn(50, 3, 4, generator=g), torch.randn(50, 3, 4, generator=g)
    traj_hat = traj + noise * torch.tensor([0.0, 0.5, 2.0])[None, :, None]
    got = fvu_per_step(traj, traj_hat)
    assert got[0] == 0.0
    assert got == pytest.approx([numpy_fvu(traj[:, t], traj_hat[:, t]) for t in range(3)], rel=1e-5)


@pytest.mark.parametrize("variant", VARIANTS)
def test_reconstruction_measures_each_space_independently(dynamics_and_traj, variant):
    dyn, traj = dynamics_and_traj
    encoding = TrajectoryEncoding(variant, dyn, positions=10)  # global_local: 30 images of 10 positions
    torch.manual_seed(0)
    width = encoding.d_in() // encoding.parts
    sae = GlobalLocalSAE(TopKSAE(width, 16, 4), TopKSAE(width, 8, 2)) if variant == "global_local" else TopKSAE(width, 16, 4)
    result = reconstruction(encoding, sae, traj, chunk=97)
    with torch.no_grad():
        traj_hat = encoding.from_rows(sae.decode(sae.encode(encoding.to_rows(traj))))
    residuals, residuals_hat = dyn.residualize(traj).numpy(), dyn.residualize(traj_hat).numpy()
    assert result["fvu_activation"] == pytest.approx([numpy_fvu(traj[:, t], traj_hat[:, t]) for t in range(4)], rel=1e-4)
    assert result["fvu_residual"] == pytest.approx([numpy_fvu(residuals[:, t], residuals_hat[:, t]) for t in range(4)], rel=1e-4)
    if variant == "residualized":  # decoding rows is the inverse of residualizing: residual FVU is the SAE's own, per block
        rows = encoding.to_rows(traj).reshape(len(traj), 4, -1)
        with torch.no_grad():
            rows_hat = sae.decode(sae.encode(encoding.to_rows(traj))).reshape(len(traj), 4, -1)
        assert result["fvu_residual"] == pytest.approx([numpy_fvu(rows[:, t], rows_hat[:, t]) for t in range(4)], rel=1e-3)
    elif variant == "global_local":  # input FVU is of the residualized row the two parts add up to
        rows = encoding.combined(encoding.to_rows(traj)).numpy()
        with torch.no_grad():
            rows_hat = encoding.combined(sae.decode(sae.encode(encoding.to_rows(traj)))).numpy()
        assert result["fvu_input"] == pytest.approx(numpy_fvu(rows, rows_hat), rel=1e-4)
    else:
        assert result["fvu_activation_one_step"] == result["fvu_activation"]


def test_a_latent_that_cannot_fire_counts_as_dead(dynamics_and_traj):
    dyn, traj = dynamics_and_traj
    encoding = TrajectoryEncoding("concat", dyn)
    sae = TopKSAE(encoding.d_in(), 8, 8)  # k = n: every latent with a positive pre-activation fires
    with torch.no_grad():
        sae.b_enc[:] = 1e6
        sae.b_enc[[2, 5]] = -1e6
    assert reconstruction(encoding, sae, traj)["dead_fraction"] == pytest.approx(2 / 8)


def test_sigma_label_is_the_mean_std_of_top_image_labels():
    labels = torch.tensor([0, 0, 0, 1, 2, 3, -1])
    top = torch.tensor([[0, 1, 2], [3, 4, 5], [6, 3, -1]])  # latent 2: one unknown label, one padding: too few to count
    assert sigma_label(top, labels, n_top=3) == pytest.approx((0.0 + np.std([1, 2, 3])) / 2)
    assert sigma_label(top, labels, n_top=2) == pytest.approx((0.0 + np.std([1, 2])) / 2)


def test_random_sigma_label_is_zero_for_one_value_and_near_the_binary_std():
    assert random_sigma_label(torch.zeros(100, dtype=torch.long)) == 0.0
    labels = torch.tensor([0, 1] * 500)
    rng = np.random.default_rng(1)
    expected = np.mean([np.std(rng.permutation(labels.numpy())[:10]) for _ in range(4000)])
    assert random_sigma_label(labels) == pytest.approx(expected, abs=0.01)


def test_factor_codes_index_values_and_mark_unnamed_factors():
    codes = factor_codes([{"colour": "red"}, {"colour": "blue", "shape": "star"}], {"colour": ("blue", "red"), "shape": ("star",)})
    assert codes["colour"].tolist() == [1, 0] and codes["shape"].tolist() == [-1, 0]


def test_most_active_latents_skip_silent_ones():
    assert most_active_latents(torch.tensor([0.5, 0.0, 3.0, 1.0]), 3).tolist() == [2, 3, 0]
    assert most_active_latents(torch.tensor([0.5, 0.0, 3.0, 1.0]), 4).tolist() == [2, 3, 0]
