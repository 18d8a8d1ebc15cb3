"""Linear dynamics between neighbouring recorded steps, and the exact residualization it defines.

a_{t+1} ≈ A_t a_t + b_t per spatial position, fit by ridge regression in closed form from
float64 sums that can be streamed shard by shard. Nothing here knows about SAEs.
"""

from dataclasses import dataclass, fields

import torch
from torch import Tensor

RIDGE_GRID = (1e-8, 1e-6, 1e-5, 1e-4, 1e-3, 1e-2, 1e-1, 1.0)


@dataclass
class _Sums:
    """Float64 sufficient statistics of the pairs (a_t, a_{t+1}) for t = 1..T-1, plus a_1."""

    n: int
    sx: Tensor  # [T-1, d]     Σ a_t
    sy: Tensor  # [T-1, d]     Σ a_{t+1}
    sxx: Tensor  # [T-1, d, d] Σ a_t a_tᵀ
    sxy: Tensor  # [T-1, d, d] Σ a_t a_{t+1}ᵀ
    syy: Tensor  # [T-1]       Σ ‖a_{t+1}‖²
    first_sq: Tensor  # []     Σ ‖a_1‖²

    @classmethod
    def zeros(cls, steps: int, dim: int) -> "_Sums":
        z = lambda *shape: torch.zeros(shape, dtype=torch.float64)  # noqa: E731
        return cls(0, z(steps - 1, dim), z(steps - 1, dim), z(steps - 1, dim, dim), z(steps - 1, dim, dim), z(steps - 1), z())

    def add(self, traj: Tensor) -> None:
        traj = traj.to(torch.float64)
        x, y = traj[:, :-1], traj[:, 1:]  # [N, T-1, d]
        self.n += traj.shape[0]
        self.sx += x.sum(0)
        self.sy += y.sum(0)
        self.sxx += torch.einsum("ntd,nte->tde", x, x)
        self.sxy += torch.einsum("ntd,nte->tde", x, y)
        self.syy += (y * y).sum((0, 2))
        self.first_sq += (traj[:, 0] ** 2).sum()

    def __add__(self, other: "_Sums") -> "_Sums":
        return _Sums(*(getattr(self, f) + getattr(other, f) for f in ("n", "sx", "sy", "sxx", "sxy", "syy", "first_sq")))

    def solve(self, ridge: Tensor) -> tuple[Tensor, Tensor]:
        """Ridge solution per step; `ridge` [T-1] is relative to the mean variance of a_t."""
        mx, my = self.sx / self.n, self.sy / self.n
        cxx = self.sxx / self.n - mx[:, :, None] * mx[:, None, :]
        cxy = self.sxy / self.n - mx[:, :, None] * my[:, None, :]
        dim = mx.shape[1]
        scale = torch.diagonal(cxx, dim1=1, dim2=2).mean(1).clamp_min(1e-300)  # mean variance per dim
        eye = torch.eye(dim, dtype=torch.float64)
        # Centered normal equations: (Cxx + λ s I) Aᵀ = Cxy; the bias is not penalized.
        a_t = torch.linalg.solve(cxx + (ridge * scale)[:, None, None] * eye, cxy)
        A = a_t.transpose(1, 2)
        b = my - torch.einsum("ted,td->te", A, mx)
        return A, b

    def sse(self, A: Tensor, b: Tensor) -> Tensor:
        """Σ‖a_{t+1} − A_t a_t − b_t‖² over these positions, per step, from the sums alone."""
        cross = torch.einsum("ted,tde->t", A, self.sxy) + (b * self.sy).sum(1)
        pred_sq = torch.einsum("ted,tdf,tef->t", A, self.sxx, A) + 2 * torch.einsum("te,ted,td->t", b, A, self.sx) + self.n * (b * b).sum(1)
        return (self.syy - 2 * cross + pred_sq).clamp_min(0)

    def sst(self) -> Tensor:
        """Total sum of squares of a_{t+1} about its mean, per step."""
        return self.syy - (self.sy * self.sy).sum(1) / self.n


class DynamicsAccumulator:
    """Streams trajectories into float64 sums; every `holdout_every`-th position is held out to pick λ."""

    def __init__(self, steps: int, dim: int, holdout_every: int = 10):
        if steps < 2:
            raise ValueError("linear dynamics need at least two recorded steps")
        self.fit_sums = _Sums.zeros(steps, dim)
        self.heldout_sums = _Sums.zeros(steps, dim)
        self.holdout_every = holdout_every
        self._seen = 0

    def update(self, traj: Tensor) -> None:
        """Add a batch of trajectories: Tensor[N, T, d]."""
        index = torch.arange(self._seen, self._seen + traj.shape[0])
        heldout = index % self.holdout_every == 0
        self._seen += traj.shape[0]
        self.fit_sums.add(traj[~heldout])
        if heldout.any():
            self.heldout_sums.add(traj[heldout])

    def finish(self, ridge: float | None = None) -> "LinearDynamics":
        """Fit on all positions; with `ridge=None`, λ per step is the grid value best on held-out positions."""
        steps = self.fit_sums.sx.shape[0]
        if ridge is None:
            if self.heldout_sums.n == 0 or self.fit_sums.n == 0:
                raise ValueError("choosing λ needs held-out and fitting positions; pass more data or a fixed ridge")
            errors = torch.stack([self.heldout_sums.sse(*self.fit_sums.solve(torch.full((steps,), lam, dtype=torch.float64))) for lam in RIDGE_GRID])
            chosen = torch.tensor(RIDGE_GRID, dtype=torch.float64)[errors.argmin(0)]
        else:
            chosen = torch.full((steps,), float(ridge), dtype=torch.float64)
        total = self.fit_sums + self.heldout_sums
        A, b = total.solve(chosen)
        sse = total.sse(A, b)
        dim = A.shape[1]
        r2 = 1 - sse / total.sst().clamp_min(1e-300)
        # Block scales: every block of the SAE input gets unit mean square per dimension.
        scales = torch.cat([(total.first_sq / (total.n * dim)).sqrt()[None], (sse / (total.n * dim)).sqrt()])
        activation_sq = torch.cat([total.first_sq[None], total.syy])
        activation_rms = (activation_sq / (total.n * dim)).sqrt().clamp_min(1e-12)
        return LinearDynamics(A=A, b=b, scales=scales.clamp_min(1e-12), r2=r2, ridge=chosen, activation_rms=activation_rms)


@dataclass
class LinearDynamics:
    """Per-step affine predictors a_{t+1} ≈ A_t a_t + b_t and the residualization they define."""

    A: Tensor  # [T-1, d, d]
    b: Tensor  # [T-1, d]
    scales: Tensor  # [T]   c_t, the RMS per dimension of r_t
    r2: Tensor  # [T-1] fraction of the variance of a_{t+1} that the predictor explains
    ridge: Tensor  # [T-1] λ used per step (relative to the mean variance of a_t)
    activation_rms: Tensor  # [T]  RMS per dimension of a_t itself (scales for the non-residual baselines)

    @classmethod
    def fit(cls, traj: Tensor, ridge: float | None = 1e-3, holdout_every: int = 10) -> "LinearDynamics":
        """Fit from trajectories in memory: Tensor[N, T, d]."""
        acc = DynamicsAccumulator(traj.shape[1], traj.shape[2], holdout_every)
        acc.update(traj)
        return acc.finish(ridge)

    @property
    def steps(self) -> int:
        return self.A.shape[0] + 1

    def _params(self, like: Tensor) -> tuple[Tensor, Tensor]:
        return self.A.to(like.device, like.dtype), self.b.to(like.device, like.dtype)

    def predict_next(self, traj: Tensor) -> Tensor:
        """A_t a_t + b_t for t = 1..T-1: Tensor[..., T-1, d] from Tensor[..., T(or T-1), d]."""
        A, b = self._params(traj)
        return torch.einsum("ted,...td->...te", A, traj[..., : self.steps - 1, :]) + b

    def residualize(self, traj: Tensor) -> Tensor:
        """r_1 = a_1, r_{t+1} = a_{t+1} − (A_t a_t + b_t): Tensor[..., T, d]."""
        return torch.cat([traj[..., :1, :], traj[..., 1:, :] - self.predict_next(traj)], dim=-2)

    def deresidualize(self, res: Tensor) -> Tensor:
        """The exact inverse of `residualize`, unrolled over steps."""
        A, b = self._params(res)
        out = [res[..., 0, :]]
        for t in range(self.steps - 1):
            out.append(res[..., t + 1, :] + out[-1] @ A[t].T + b[t])
        return torch.stack(out, dim=-2)

    def propagate(self, delta_r: Tensor) -> Tensor:
        """The linear part of `deresidualize`: φ_1 = δr_1, φ_{t+1} = δr_{t+1} + A_t φ_t."""
        A, _ = self._params(delta_r)
        out = [delta_r[..., 0, :]]
        for t in range(self.steps - 1):
            out.append(delta_r[..., t + 1, :] + out[-1] @ A[t].T)
        return torch.stack(out, dim=-2)

    def state_dict(self) -> dict[str, Tensor]:
        return {f.name: getattr(self, f.name) for f in fields(self)}

    @classmethod
    def from_state_dict(cls, state: dict[str, Tensor]) -> "LinearDynamics":
        return cls(**{f.name: state[f.name] for f in fields(cls)})
