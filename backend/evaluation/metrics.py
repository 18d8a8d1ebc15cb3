"""Quality measures of a trained SAE bundle that need no model: reconstruction per step, dead latents, label purity.

All variants are compared in the same two spaces (DESIGN.md step 7): activation space, the
site's own trajectories, and residual space, the one-step residuals of the fitted dynamics
(r_1 = a_1, r_{t+1} = a_{t+1} − A_t a_t − b_t), whichever space the SAE was trained in.
"""

from collections.abc import Sequence

import torch
from torch import Tensor

from backend.method.encodings import TrajectoryEncoding
from backend.method.global_local import GlobalLocalSAE
from backend.method.sae import TopKSAE
from backend.method.sae_train import fraction_of_variance_unexplained


def fvu_per_step(traj: Tensor, traj_hat: Tensor) -> list[float]:
    """FVU of each step over all positions: traj and traj_hat are Tensor[N, T, d]."""
    return [float(fraction_of_variance_unexplained(traj[:, t], traj_hat[:, t])) for t in range(traj.shape[1])]


@torch.no_grad()
def reconstruction(encoding: TrajectoryEncoding, sae: TopKSAE | GlobalLocalSAE, traj: Tensor, chunk: int = 8192) -> dict:
    """Per-step FVU of the SAE's reconstruction of `traj` [N, T, d], in activation and residual space.

    `activation` decodes every step from reconstructed rows alone (for the residualized variant
    errors compound through the dynamics); `activation_one_step` predicts each step from the true
    previous one (equal to `activation` for the other variants). Also the share of latents that
    never fire on these trajectories.
    """
    rows = encoding.to_rows(traj)
    fired = torch.zeros(sae.n_latents, dtype=torch.bool)
    recon = []
    for part in rows.split(chunk):
        part_hat, codes = sae.reconstruct(part)
        fired |= (codes > 0).any(0)
        recon.append(part_hat)
    rows_hat = torch.cat(recon)
    traj_hat = encoding.from_rows(rows_hat)
    dynamics = encoding.dynamics
    return {
        "fvu_activation": fvu_per_step(traj, traj_hat),
        "fvu_activation_one_step": fvu_per_step(traj, encoding.one_step_reconstruction(rows_hat, traj)),
        "fvu_residual": fvu_per_step(dynamics.residualize(traj), dynamics.residualize(traj_hat)),
        "fvu_input": float(fraction_of_variance_unexplained(encoding.combined(rows), encoding.combined(rows_hat))),
        "dead_fraction": float(1 - fired.float().mean()),
    }


def factor_codes(image_factors: Sequence[dict[str, str]], factor_values: dict[str, Sequence[str]]) -> dict[str, Tensor]:
    """Each factor's value per image as its index in `factor_values` (−1 where the caption does not say)."""
    return {name: torch.tensor([values.index(f[name]) if name in f else -1 for f in image_factors])
            for name, values in factor_values.items()}


def sigma_label(top_image_id: Tensor, labels: Tensor, n_top: int = 10) -> float:
    """Revelio's σ_label for one factor: mean std of the labels of each latent's top-`n_top` images.

    `top_image_id` [latents, ≥n_top] lists the measured latents' best images first (−1: none),
    `labels` [n_images] are value indices (−1: unknown, skipped). Lower is purer; a latent blind
    to the factor scores about `random_sigma_label`.
    """
    stds = []
    for ids in top_image_id:
        values = labels[ids[ids >= 0]]
        values = values[values >= 0][:n_top].float()
        if len(values) >= 2:
            stds.append(values.std(unbiased=False))
    return float(torch.stack(stds).mean()) if stds else float("nan")


def random_sigma_label(labels: Tensor, n_top: int = 10, draws: int = 2000, seed: int = 0) -> float:
    """σ_label of random `n_top`-image sets: the value a latent unrelated to the factor gets."""
    known = labels[labels >= 0].float()
    generator = torch.Generator().manual_seed(seed)
    picks = torch.stack([torch.randperm(len(known), generator=generator)[:n_top] for _ in range(draws)])
    return float(known[picks].std(1, unbiased=False).mean())


def most_active_latents(latent_max: Tensor, count: int) -> Tensor:
    """Indices of the `count` latents with the highest maximum activation that fired at all."""
    order = latent_max.argsort(descending=True)[:count]
    return order[latent_max[order] > 0]
