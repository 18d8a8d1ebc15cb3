"""How a trajectory becomes SAE input rows, and how decoder columns map back to activation space.

Four variants share one trainer and latent budget (DESIGN.md step 7):
- residualized: x = [a_1, r_2, …, r_T] / c_t  (the method)
- global_local: the residualized row split into its image's spatial mean x̄ and the position's
                deviation x − x̄, side by side: [x − x̄ ; x̄] (backend/method/global_local.py)
- concat:       x = [a_1, a_2, …, a_T] / rms_t (temporal concatenation, no dynamics)
- per_step:     one row per (position, step), x = a_t / rms  (a single SAE over all steps)
"""

from collections.abc import Iterator
from dataclasses import dataclass

import torch
from torch import Tensor

from backend.method.dynamics import LinearDynamics

VARIANTS = ("residualized", "global_local", "concat", "per_step")
RESIDUALIZED = ("residualized", "global_local")
DENSE_VARIANTS = ("residualized", "concat")  # one row per position in one part: dense directions apply (backend/method/dense_part.py)


@dataclass
class TrajectoryEncoding:
    """A variant of SAE input built from trajectories Tensor[N, T, d] and fitted dynamics."""

    variant: str
    dynamics: LinearDynamics
    positions: int = 0  # spatial positions per image; global_local needs them (trajectories come image by image)

    def __post_init__(self):
        if self.variant not in VARIANTS:
            raise ValueError(f"unknown variant {self.variant!r}; choose one of {VARIANTS}")
        if self.variant == "global_local" and self.positions < 1:
            raise ValueError("the global_local encoding needs the number of positions per image")

    @property
    def steps(self) -> int:
        return self.dynamics.steps

    @property
    def dim(self) -> int:
        return self.dynamics.A.shape[-1]

    @property
    def parts(self) -> int:
        """Row parts, each [T*d]: 2 for global_local (deviation, mean), else 1."""
        return 2 if self.variant == "global_local" else 1

    def d_in(self) -> int:
        """Width of one SAE input row."""
        return self.dim if self.variant == "per_step" else self.parts * self.steps * self.dim

    def block_scales(self) -> Tensor:
        """c_t per step: Tensor[T]."""
        dyn = self.dynamics
        if self.variant in RESIDUALIZED:
            return dyn.scales
        if self.variant == "concat":
            return dyn.activation_rms
        return dyn.activation_rms.pow(2).mean().sqrt().expand(self.steps)

    def activation_scale(self) -> Tensor:
        """√E‖a_t‖² per step, the typical norm of one position's activation: Tensor[T] (falls ~10x over SD's schedule)."""
        return self.dynamics.activation_rms * self.dim**0.5

    def to_rows(self, traj: Tensor) -> Tensor:
        """Trajectories Tensor[N, T, d] to SAE rows: Tensor[N, T*d] (per_step: Tensor[N*T, d], step-major per position)."""
        scales = self.block_scales().to(traj.device, traj.dtype)[:, None]
        blocks = self.dynamics.residualize(traj) if self.variant in RESIDUALIZED else traj
        blocks = blocks / scales
        if self.variant == "per_step":
            return blocks.reshape(-1, self.dim)
        if self.variant == "global_local":
            return self.split_by_image(blocks.flatten(1))
        return blocks.flatten(1)

    def split_by_image(self, rows: Tensor) -> Tensor:
        """Rows Tensor[N, D] of whole images, image after image, to [row − its image's mean ; the mean]: Tensor[N, 2D]."""
        if rows.shape[0] % self.positions:
            raise ValueError(f"global_local rows come in whole images of {self.positions} positions, got {rows.shape[0]} rows")
        images = rows.reshape(-1, self.positions, rows.shape[1])
        mean = images.mean(1, keepdim=True).expand_as(images)
        return torch.cat([images - mean, mean], dim=-1).reshape(rows.shape[0], -1)

    def combined(self, rows: Tensor) -> Tensor:
        """Rows (or reconstructions) as the residualized row they stand for: Tensor[N, T*d] (the parts summed)."""
        return rows.reshape(rows.shape[0], self.parts, -1).sum(1) if self.parts > 1 else rows

    def from_rows(self, rows: Tensor) -> Tensor:
        """Inverse of `to_rows`: SAE rows (or reconstructions) back to trajectories Tensor[N, T, d]."""
        scales = self.block_scales().to(rows.device, rows.dtype)[:, None]
        blocks = self.combined(rows).reshape(-1, self.steps, self.dim) * scales
        return self.dynamics.deresidualize(blocks) if self.variant in RESIDUALIZED else blocks

    def one_step_reconstruction(self, rows_hat: Tensor, traj: Tensor) -> Tensor:
        """Trajectories from reconstructed rows, each step predicted from the true previous one.

        For the residualized variant â_{t+1} = r̂_{t+1} + A_t a_t + b_t: the error of step t is the
        SAE's alone, while `from_rows` lets earlier errors compound through the dynamics.
        """
        if self.variant not in RESIDUALIZED:
            return self.from_rows(rows_hat)
        scales = self.block_scales().to(rows_hat.device, rows_hat.dtype)[:, None]
        blocks = self.combined(rows_hat).reshape(-1, self.steps, self.dim) * scales
        predicted = torch.cat([torch.zeros_like(traj[:, :1]), self.dynamics.predict_next(traj)], dim=1)
        return blocks + predicted

    def block_deltas(self, W_dec: Tensor) -> Tensor:
        """What each latent writes directly into each step's block, in activation units: Tensor[n_latents, T, d]."""
        scales = self.block_scales().to(W_dec.device, W_dec.dtype)[:, None]
        columns = W_dec.T  # [n, d_in]
        if self.variant == "per_step":  # one direction, added at every step
            return columns[:, None, :] * scales
        return self.combined(columns).reshape(-1, self.steps, self.dim) * scales

    def feature_trajectories(self, W_dec: Tensor) -> Tensor:
        """φ_j,t for every latent j: Tensor[n_latents, T, d], the linear effect of one unit of z_j on a_t."""
        delta = self.block_deltas(W_dec)
        return self.dynamics.propagate(delta) if self.variant in RESIDUALIZED else delta

    def prefix_pre_activations(self, traj: Tensor, weights: Tensor, bias: Tensor) -> Iterator[Tensor]:
        """Pre-activations from the trajectory known up to each step t: one Tensor[P, L] per step, in order.

        DESIGN.md step 6: later blocks of the input are set to zero (for the residualized
        variant: "the rest follows the linear dynamics"). The encoder is linear, so step t only
        adds block t's contribution to a running sum: all steps together cost one full encoding.
        `weights` are the latents' encoder rows Tensor[L, d_in], `bias` is b_enc − W_enc·b_pre for
        them. For the per_step variant each step's own pre-activation is given. With dense directions
        (backend/method/dense_part.py) the encoder ignores them, so a frame codes the prefix with its
        part along them removed.
        """
        if self.variant == "per_step":
            blocks, step_weights = self.to_rows(traj).reshape(-1, self.steps, self.dim), weights
            for t in range(self.steps):
                yield blocks[:, t] @ step_weights.T + bias
            return
        blocks = self.to_rows(traj).reshape(-1, self.parts, self.steps, self.dim)  # [P, parts, T, d]
        step_weights = weights.reshape(len(weights), self.parts, self.steps, self.dim)  # [L, parts, T, d]
        running = bias.expand(blocks.shape[0], -1)
        for t in range(self.steps):
            running = running + blocks[:, :, t].flatten(1) @ step_weights[:, :, t].flatten(1).T
            yield running
