import torch

from backend.method.dynamics import DynamicsAccumulator, LinearDynamics


def linear_trajectories(n=3000, steps=5, dim=6, noise=0.01, seed=0):
    """Trajectories from known well-conditioned dynamics (0.9 × an orthogonal map) plus noise."""
    g = torch.Generator().manual_seed(seed)
    A = torch.stack([0.9 * torch.linalg.qr(torch.randn(dim, dim, generator=g, dtype=torch.float64))[0] for _ in range(steps - 1)])
    b = torch.randn(steps - 1, dim, generator=g, dtype=torch.float64)
    a = [torch.randn(n, dim, generator=g, dtype=torch.float64)]
    for t in range(steps - 1):
        a.append(a[-1] @ A[t].T + b[t] + noise * torch.randn(n, dim, generator=g, dtype=torch.float64))
    return torch.stack(a, 1), A, b


def test_ridge_fit_recovers_known_dynamics():
    traj, A, b = linear_trajectories()
    dyn = LinearDynamics.fit(traj, ridge=None)
    assert torch.allclose(dyn.A, A, atol=2e-3)
    assert torch.allclose(dyn.b, b, atol=2e-3)
    assert (dyn.r2 > 0.999).all()


def test_r2_is_near_zero_on_independent_noise():
    noise = torch.randn(4000, 4, 8, generator=torch.Generator().manual_seed(1), dtype=torch.float64)
    dyn = LinearDynamics.fit(noise, ridge=None)
    assert (dyn.r2.abs() < 0.02).all()


def test_fit_matches_least_squares_with_intercept():
    traj, _, _ = linear_trajectories(n=500, noise=0.3, seed=2)
    dyn = LinearDynamics.fit(traj, ridge=1e-12)
    for t in range(traj.shape[1] - 1):
        design = torch.cat([traj[:, t], torch.ones(len(traj), 1, dtype=torch.float64)], 1)
        solution = torch.linalg.lstsq(design, traj[:, t + 1]).solution
        assert torch.allclose(dyn.A[t], solution[:-1].T, atol=1e-8)
        assert torch.allclose(dyn.b[t], solution[-1], atol=1e-8)


def test_streamed_fit_equals_fit_in_memory():
    traj, _, _ = linear_trajectories(n=1000, noise=0.2, seed=3)
    acc = DynamicsAccumulator(traj.shape[1], traj.shape[2])
    for chunk in traj.split(137):
        acc.update(chunk)
    streamed, direct = acc.finish(ridge=1e-3), LinearDynamics.fit(traj, ridge=1e-3)
    assert torch.allclose(streamed.A, direct.A, atol=1e-12)
    assert torch.allclose(streamed.scales, direct.scales, atol=1e-12)


def test_larger_ridge_is_chosen_when_data_are_scarce_and_noisy():
    g = torch.Generator().manual_seed(4)
    traj = torch.randn(40, 3, 30, generator=g, dtype=torch.float64)  # 30 dims, 36 fitting rows: overfits without λ
    dyn = LinearDynamics.fit(traj, ridge=None)
    assert (dyn.ridge >= 1e-2).all()


def test_deresidualize_inverts_residualize():
    traj, _, _ = linear_trajectories(noise=0.5, seed=5)
    dyn = LinearDynamics.fit(traj, ridge=1e-2)
    res = dyn.residualize(traj)
    assert torch.equal(res[:, 0], traj[:, 0])
    assert torch.allclose(dyn.deresidualize(res), traj, atol=1e-12, rtol=0)
    assert torch.allclose(dyn.residualize(dyn.deresidualize(res)), res, atol=1e-12, rtol=0)


def test_residuals_have_the_block_scales_as_rms():
    traj, _, _ = linear_trajectories(noise=0.3, seed=6)
    dyn = LinearDynamics.fit(traj, ridge=1e-3)
    rms = dyn.residualize(traj).pow(2).mean((0, 2)).sqrt()
    assert torch.allclose(dyn.scales, rms, rtol=1e-9)


def test_propagate_is_the_directional_derivative_of_deresidualize():
    traj, _, _ = linear_trajectories(n=200, noise=0.5, seed=7)
    dyn = LinearDynamics.fit(traj, ridge=1e-3)
    res = dyn.residualize(traj[:3])
    direction = torch.randn(res.shape, generator=torch.Generator().manual_seed(8), dtype=torch.float64)
    eps = 1e-6
    finite_difference = (dyn.deresidualize(res + eps * direction) - dyn.deresidualize(res - eps * direction)) / (2 * eps)
    assert torch.allclose(dyn.propagate(direction), finite_difference, atol=1e-7)
