"""Global and local latents: each image's spatial mean by a small image-level SAE, the deviations from it by the per-position SAE.

At a UNet site most of the activation variance is each image's spatial mean (colour, background,
the object's identity are readable everywhere), so one per-position SAE spends latents rebuilding
that image-wide copy at every position. Splitting the residualized row r_p = (r_p − r̄) + r̄ gives
the image-level part its own latents and leaves the per-position latents the local structure.
Both parts are linear in the trajectory, so both keep the residualized temporal form.
"""

import json
from pathlib import Path

import torch
from torch import Tensor, nn

from backend.errors import ExplorerError
from backend.io import write_json
from backend.method.sae import TopKSAE

GLOBAL_DIR = "global"  # the image-level SAE's sub-directory of the SAE directory


class GlobalLocalSAE(nn.Module):
    """Two TopK SAEs over rows [r_p − r̄ ; r̄] (TrajectoryEncoding "global_local").

    Latents 0 … n_local−1 are local (per position), the rest global: a global latent's code is
    its image's, the same at every position. The dense weights below are block-diagonal views
    for the code that treats an SAE as one linear encoder and decoder (maps over time, feature
    trajectories); training uses the two SAEs themselves.
    """

    def __init__(self, local: TopKSAE, image: TopKSAE):
        super().__init__()
        if local.d_in != image.d_in:
            raise ValueError(f"local and global SAEs read rows of one width, got {local.d_in} and {image.d_in}")
        self.local, self.image = local, image
        self.d_in = 2 * local.d_in
        self.n_local = local.n_latents
        self.n_latents = local.n_latents + image.n_latents
        self.k = local.k + image.k
        self.dense_directions = 0  # dense directions are for one-part rows (DENSE_VARIANTS, backend/method/dense_part.py)

    @property
    def W_enc(self) -> Tensor:
        return torch.block_diag(self.local.W_enc, self.image.W_enc)

    @property
    def W_dec(self) -> Tensor:
        return torch.block_diag(self.local.W_dec, self.image.W_dec)

    @property
    def b_enc(self) -> Tensor:
        return torch.cat([self.local.b_enc, self.image.b_enc])

    @property
    def b_pre(self) -> Tensor:
        return torch.cat([self.local.b_pre, self.image.b_pre])

    def halves(self, x: Tensor) -> tuple[Tensor, Tensor]:
        """(local part, global part) of rows or of any Tensor[..., d_in]."""
        return x[..., : self.local.d_in], x[..., self.local.d_in :]

    def pre_activations(self, x: Tensor) -> Tensor:
        deviation, mean = self.halves(x)
        return torch.cat([self.local.pre_activations(deviation), self.image.pre_activations(mean)], dim=-1)

    def activate(self, pre: Tensor) -> Tensor:
        """TopK within each kind: k_local local and k_global global latents per row."""
        return torch.cat([self.local.activate(pre[..., : self.n_local]), self.image.activate(pre[..., self.n_local :])], dim=-1)

    def encode(self, x: Tensor) -> Tensor:
        return self.activate(self.pre_activations(x))

    def decode(self, codes: Tensor) -> Tensor:
        return torch.cat([self.local.decode(codes[..., : self.n_local]), self.image.decode(codes[..., self.n_local :])], dim=-1)

    def reconstruct(self, x: Tensor) -> tuple[Tensor, Tensor]:
        """(x̂, codes), as TopKSAE.reconstruct."""
        codes = self.encode(x)
        return self.decode(codes), codes

    def is_global(self) -> Tensor:
        """Bool Tensor[n_latents]: which latents are image-level."""
        return torch.arange(self.n_latents) >= self.n_local

    def config(self) -> dict:
        return self.local.config() | {"global": self.image.config()}

    def save(self, path: str | Path, dtype: torch.dtype = torch.float32) -> None:
        """The local SAE in `path` as a TopKSAE, the global one in `path`/global."""
        self.local.save(path, dtype)
        self.image.save(Path(path) / GLOBAL_DIR, dtype)
        write_json(Path(path) / "config.json", self.config())

    @classmethod
    def load(cls, path: str | Path) -> "GlobalLocalSAE":
        path = Path(path)
        sae = cls(TopKSAE.load(path), TopKSAE.load(path / GLOBAL_DIR))
        try:
            config = json.loads((path / "config.json").read_text())
        except (OSError, ValueError) as err:
            raise ExplorerError(f"SAE config in {path} cannot be read: {err}") from err
        if config.get("global") != sae.image.config():
            raise ExplorerError(f"SAE in {path}: config.json and the global SAE in {GLOBAL_DIR}/ disagree; rebuild the bundle.")
        return sae.eval()
