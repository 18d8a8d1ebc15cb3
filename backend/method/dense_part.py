"""Dense directions taken out of the SAE's input and reconstructed exactly, beside the sparse code.

A TopK SAE's codes are nonnegative, so a direction of its input that every row uses, with either
sign, is written as two latents with opposite decoders, each firing on a large share of every
image's positions: on the shipped demo bundle such pairs carried 14.7 of the 18.3 % of code mass
in image-wide latents (docs/LOCALIZATION.md). The rows' top principal directions are those
directions. The SAE trains on rows with them projected out (`project_out`), and `fold` turns it
into one TopKSAE that reads raw rows and adds the projection back, so the rest of the code (maps,
prefix encodings, steering by decoder columns) sees an ordinary SAE whose latents ignore them.
"""

import torch
from torch import Tensor

from backend.method.sae import TopKSAE


def fit_dense_basis(rows: Tensor, directions: int, seed: int = 0) -> tuple[Tensor, Tensor]:
    """(basis Tensor[m, d] with orthonormal rows, center Tensor[d]): the top `directions` principal directions of `rows`
    [N, d] about their mean. A randomized SVD (Halko et al.), seeded, so a build that reruns gets the same basis."""
    if not 0 < directions < min(rows.shape):
        raise ValueError(f"dense directions must be in [1, {min(rows.shape)}) for rows of shape {tuple(rows.shape)}, got {directions}")
    rows = rows.float()
    center = rows.mean(0)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        _, _, V = torch.svd_lowrank(rows - center, q=min(directions + 10, *rows.shape), niter=6)
    return V[:, :directions].T.contiguous(), center


def project_out(rows: Tensor, basis: Tensor, center: Tensor) -> Tensor:
    """Rows with their component along the basis, about `center`, removed: x − VᵀV (x − center)."""
    return rows - (rows - center) @ basis.T @ basis


@torch.no_grad()
def fold(sae: TopKSAE, basis: Tensor, center: Tensor) -> TopKSAE:
    """The TopKSAE that, on raw rows x, gives `sae`'s codes of project_out(x) and reconstructs x̂ = x̂' + VᵀV (x − center)
    with the reconstruction x̂' of the projected rows confined to their subspace.

    With P = VᵀV: W_enc (x' − b) = W_enc (I − P)(x − b) + W_enc P (center − b), so the encoder loses its P part and
    the constant moves into b_enc; b_pre moves onto the projected rows' subspace (P b_pre = P center), where
    P (x − b_pre) = P (x − center); decoder columns lose their P part, which the dense part now writes exactly.
    """
    folded = TopKSAE(sae.d_in, sae.n_latents, sae.k, dense_directions=basis.shape[0])
    W_enc, b_pre = sae.W_enc.float(), sae.b_pre.float()
    encoder_along = W_enc @ basis.T  # [n, m]
    folded.W_enc.copy_(W_enc - encoder_along @ basis)
    folded.b_enc.copy_(sae.b_enc.float() + encoder_along @ (basis @ (center - b_pre)))
    folded.b_pre.copy_(b_pre - basis.T @ (basis @ (b_pre - center)))
    folded.W_dec.copy_(sae.W_dec.float() - basis.T @ (basis @ sae.W_dec.float()))
    folded.dense_basis.copy_(basis)
    return folded.eval()
