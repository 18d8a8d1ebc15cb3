"""Steering: add or scale a latent's feature trajectory at the site during sampling (DESIGN.md, Steering)."""

import math
from dataclasses import dataclass
from typing import Literal

import torch
from torch import Tensor

from backend.diffusion.hooks import SiteHook
from backend.errors import ExplorerError

MAX_STRENGTH = 1000.0
MODES = ("add", "scale")


@dataclass(frozen=True)
class Steer:
    """One latent to steer: `add` α·s_j·φ_j, or `scale` its own contribution by α (α = 0 ablates)."""

    latent: int
    strength: float
    mode: Literal["add", "scale"] = "add"

    def __post_init__(self):
        if self.mode not in MODES:
            raise ExplorerError(f"Steering mode must be one of {', '.join(MODES)}, got {self.mode!r}.")
        check_strength(self.strength)


def check_strength(strength) -> float:
    """`strength` as a float, or a clear error for non-numbers, NaN, infinities and strengths beyond ±MAX_STRENGTH."""
    if isinstance(strength, bool) or not isinstance(strength, int | float) or not math.isfinite(strength) or abs(strength) > MAX_STRENGTH:
        raise ExplorerError(f"Steering strength must be a finite number within ±{MAX_STRENGTH:g}, got {strength!r}.")
    return float(strength)


def interpolate_over_steps(values: Tensor, recorded_steps: list[int], step: int) -> Tensor:
    """values[t] at recorded step τ_t, linearly interpolated for sampler steps between them (clamped outside)."""
    if step <= recorded_steps[0]:
        return values[0]
    if step >= recorded_steps[-1]:
        return values[-1]
    right = next(i for i, s in enumerate(recorded_steps) if s >= step)
    left = right - 1
    w = (step - recorded_steps[left]) / (recorded_steps[right] - recorded_steps[left])
    return torch.lerp(values[left], values[right], w)


@dataclass
class SteeringHook(SiteHook):
    """Adds a precomputed per-position edit to the site's conditional output at steps inside the window.

    `deltas` [T, P, C] is the change of a_t at each recorded step and position (already
    masked and summed over latents). Codes, typical activations and φ all describe the
    conditional half (capture records only it), so only those rows are edited. The same edit on
    the unconditional rows would cancel most of it: guidance u + g·(c − u) moves by δ for
    δ on both rows, by g·δ for δ on c alone, and the unconditional run never had the feature
    that a scale edit removes.
    """

    site: str
    deltas: Tensor  # [T, H*W, C]
    recorded_steps: list[int]
    window: tuple[int, int]  # sampler steps, inclusive

    def __call__(self, step: int, output: Tensor, cond: slice) -> Tensor | None:
        if not self.window[0] <= step <= self.window[1]:
            return None
        b, c, h, w = output.shape
        if self.deltas.device != output.device or self.deltas.dtype != output.dtype:  # once per run, not per step
            self.deltas = self.deltas.to(output.device, output.dtype)
        delta = interpolate_over_steps(self.deltas, self.recorded_steps, step)  # [P, C]
        edited = output.clone()
        edited[cond] += delta.T.reshape(1, c, h, w)
        return edited


def steering_deltas(
    steers: list[Steer],
    feature_trajectories: Tensor,  # [n_latents, T, C]
    typical: Tensor,  # [n_latents]   s_j
    base_codes: Tensor | None,  # [P, n_latents] the base image's codes (only a scale reads them: None when all add)
    mask: Tensor,  # [P] bool or float weights
    image_wide: Tensor | None = None,  # [n_latents] bool: global latents, which edit every position whatever the mask
) -> Tensor:
    """Σ over steers of the per-position change of a_t: Tensor[T, P, C]."""
    steps, channels = feature_trajectories.shape[1:]
    total = torch.zeros(steps, mask.shape[0], channels)
    everywhere = torch.ones(mask.shape[0])
    for steer in steers:
        where = everywhere if image_wide is not None and image_wide[steer.latent] else mask
        phi = feature_trajectories[steer.latent].float()  # [T, C]
        if steer.mode == "add":
            amount = steer.strength * float(typical[steer.latent]) * torch.ones(mask.shape[0])  # [P]
        else:
            amount = (steer.strength - 1.0) * base_codes[:, steer.latent].float()
        total += (amount * where.float())[None, :, None] * phi[:, None, :]
    return total
