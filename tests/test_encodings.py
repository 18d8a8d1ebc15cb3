import pytest
import torch

from backend.method.dynamics import LinearDynamics
from backend.method.encodings import VARIANTS, TrajectoryEncoding
from tests.test_dynamics import linear_trajectories

POSITIONS = 4  # positions per image, for the global_local variant (rows come image by image)


def encoding_of(variant: str, dyn: LinearDynamics) -> TrajectoryEncoding:
    return TrajectoryEncoding(variant, dyn, POSITIONS)


@pytest.fixture(scope="module")
def dynamics_and_traj():
    traj, _, _ = linear_trajectories(n=400, steps=4, dim=5, noise=0.3, seed=11)
    return LinearDynamics.fit(traj, ridge=1e-3), traj


@pytest.mark.parametrize("variant", VARIANTS)
def test_rows_round_trip_to_trajectories(dynamics_and_traj, variant):
    dyn, traj = dynamics_and_traj
    encoding = encoding_of(variant, dyn)
    rows = encoding.to_rows(traj)
    assert rows.shape[1] == encoding.d_in()
    assert torch.allclose(encoding.from_rows(rows), traj, atol=1e-10)


def test_residualized_blocks_have_unit_mean_square(dynamics_and_traj):
    dyn, traj = dynamics_and_traj
    rows = TrajectoryEncoding("residualized", dyn).to_rows(traj).reshape(len(traj), dyn.steps, -1)
    assert torch.allclose(rows.pow(2).mean((0, 2)), torch.ones(dyn.steps, dtype=rows.dtype), rtol=1e-8)


@pytest.mark.parametrize("variant", VARIANTS)
def test_feature_trajectory_is_the_effect_of_one_unit_of_a_latent(dynamics_and_traj, variant):
    """φ_j equals from_rows(x + e_j-th decoder column) − from_rows(x), computed independently."""
    dyn, traj = dynamics_and_traj
    encoding = encoding_of(variant, dyn)
    W_dec = torch.randn(encoding.d_in(), 3, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    phi = encoding.feature_trajectories(W_dec)
    base = encoding.to_rows(traj[:POSITIONS])  # one whole image
    for j in range(3):
        if variant == "per_step":  # the same direction added at every step's row
            shifted = base + W_dec[:, j]
        else:
            shifted = base + W_dec[:, j][None]
        effect = encoding.from_rows(shifted) - encoding.from_rows(base)
        assert torch.allclose(phi[j], effect[0], atol=1e-10)


def test_prefix_pre_activations_equal_encoding_inputs_with_later_blocks_zeroed(dynamics_and_traj):
    dyn, traj = dynamics_and_traj
    encoding = TrajectoryEncoding("residualized", dyn)
    g = torch.Generator().manual_seed(4)
    W_enc = torch.randn(3, encoding.d_in(), generator=g, dtype=torch.float64)
    b_enc, b_pre = torch.randn(3, generator=g, dtype=torch.float64), torch.randn(encoding.d_in(), generator=g, dtype=torch.float64)
    got = list(encoding.prefix_pre_activations(traj[:7], W_enc, b_enc - W_enc @ b_pre))
    assert len(got) == dyn.steps
    rows = encoding.to_rows(traj[:7]).reshape(7, dyn.steps, -1)
    for t in range(dyn.steps):
        prefix = rows.clone()
        prefix[:, t + 1 :] = 0  # the input as known after step t
        expected = (prefix.flatten(1) - b_pre) @ W_enc.T + b_enc
        assert torch.allclose(got[t], expected, atol=1e-10)


def test_per_step_prefix_pre_activations_are_each_steps_own(dynamics_and_traj):
    dyn, traj = dynamics_and_traj
    encoding = TrajectoryEncoding("per_step", dyn)
    g = torch.Generator().manual_seed(5)
    W_enc, b_enc = torch.randn(3, encoding.d_in(), generator=g, dtype=torch.float64), torch.randn(3, generator=g, dtype=torch.float64)
    rows = encoding.to_rows(traj[:4]).reshape(4, dyn.steps, -1)
    for t, got in enumerate(encoding.prefix_pre_activations(traj[:4], W_enc, b_enc)):
        assert torch.allclose(got, rows[:, t] @ W_enc.T + b_enc, atol=1e-10)


def test_activation_scale_is_the_root_mean_square_norm(dynamics_and_traj):
    dyn, traj = dynamics_and_traj
    expected = traj.pow(2).sum(2).mean(0).sqrt()  # √E‖a_t‖² over the fitted positions
    assert torch.allclose(TrajectoryEncoding("residualized", dyn).activation_scale(), expected.to(dyn.activation_rms.dtype), rtol=1e-6)


@pytest.mark.parametrize("variant", VARIANTS)
def test_one_step_reconstruction_of_exact_rows_is_the_trajectory(dynamics_and_traj, variant):
    dyn, traj = dynamics_and_traj
    encoding = encoding_of(variant, dyn)
    assert torch.allclose(encoding.one_step_reconstruction(encoding.to_rows(traj), traj), traj, atol=1e-10)


def test_one_step_reconstruction_does_not_compound_errors(dynamics_and_traj):
    dyn, traj = dynamics_and_traj
    encoding = TrajectoryEncoding("residualized", dyn)
    rows = encoding.to_rows(traj)
    noisy = rows + 0.1 * torch.randn(rows.shape, generator=torch.Generator().manual_seed(3), dtype=rows.dtype)
    one_step_error = (encoding.one_step_reconstruction(noisy, traj) - traj).reshape(len(traj), dyn.steps, -1)
    expected = ((noisy - rows).reshape(len(traj), dyn.steps, -1) * dyn.scales[:, None])
    assert torch.allclose(one_step_error, expected, atol=1e-10)
