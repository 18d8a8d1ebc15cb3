"""The TopK sparse autoencoder (Gao et al. 2024) as a small module; it knows nothing of diffusion."""

import json
from pathlib import Path

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file
from torch import Tensor, nn

from backend.errors import ExplorerError
from backend.io import write_json, write_safetensors


def topk_codes(pre: Tensor, k: int) -> Tensor:
    """Keep the k largest entries per row of `pre`, ReLU them, zero the rest: dense Tensor like `pre`."""
    values, indices = pre.topk(k, dim=-1)
    return torch.zeros_like(pre).scatter_(-1, indices, values.relu())


class TopKSAE(nn.Module):
    """z = TopK(W_enc (x − b_pre) + b_enc),  x̂ = W_dec z + b_pre + VᵀV (x − b_pre), with unit-norm decoder columns.

    V (`dense_basis`, m orthonormal rows, m = 0 unless built with dense directions) spans directions
    of the input that every row uses with either sign; they are reconstructed exactly and densely,
    and the encoder and decoder are orthogonal to them (backend/method/dense_part.py). Folding
    removes each decoder column's part along V, so its norm can fall below 1 (0.992 at the least on
    the shipped demo bundle).
    """

    def __init__(self, d_in: int, n_latents: int, k: int, dense_directions: int = 0):
        super().__init__()
        if not 0 < k <= n_latents:
            raise ValueError(f"k must be in [1, n_latents={n_latents}], got {k}")
        if not 0 <= dense_directions < d_in:
            raise ValueError(f"dense_directions must be in [0, d_in={d_in}), got {dense_directions}")
        self.d_in, self.n_latents, self.k, self.dense_directions = d_in, n_latents, k, dense_directions
        W_dec = torch.randn(d_in, n_latents)
        W_dec /= W_dec.norm(dim=0, keepdim=True)
        self.W_dec = nn.Parameter(W_dec)  # [d_in, n_latents], columns are feature directions
        self.W_enc = nn.Parameter(W_dec.T.contiguous())  # [n_latents, d_in], tied at init; row-major (fused Adam needs state and weight alike)
        self.b_enc = nn.Parameter(torch.zeros(n_latents))
        self.b_pre = nn.Parameter(torch.zeros(d_in))
        if dense_directions:
            self.register_buffer("dense_basis", torch.zeros(dense_directions, d_in))  # [m, d_in], orthonormal rows

    def pre_activations(self, x: Tensor) -> Tensor:
        """W_enc (x − b_pre) + b_enc: Tensor[N, n_latents]."""
        return (x - self.b_pre) @ self.W_enc.T + self.b_enc

    def activate(self, pre: Tensor) -> Tensor:
        """Codes from pre-activations: TopK then ReLU."""
        return topk_codes(pre, self.k)

    def encode(self, x: Tensor) -> Tensor:
        """Dense codes with at most k non-zeros per row (exactly k when the k-th pre-activation is positive)."""
        return self.activate(self.pre_activations(x))

    def decode(self, codes: Tensor) -> Tensor:
        """W_dec z + b_pre: Tensor[N, d_in]."""
        return codes @ self.W_dec.T + self.b_pre

    def dense_part(self, x: Tensor) -> Tensor:
        """VᵀV (x − b_pre): the part of x the dense directions reconstruct (0 without them)."""
        if not self.dense_directions:
            return torch.zeros_like(x)
        return (x - self.b_pre) @ self.dense_basis.T @ self.dense_basis

    def forward(self, x: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        """(x̂, codes, pre-activations); the trainer needs all three."""
        pre = self.pre_activations(x)
        codes = topk_codes(pre, self.k)
        x_hat = self.decode(codes)
        return (x_hat + self.dense_part(x) if self.dense_directions else x_hat), codes, pre

    def reconstruct(self, x: Tensor) -> tuple[Tensor, Tensor]:
        """(x̂, codes): the reconstruction of rows `x`, with the dense part, and their codes."""
        x_hat, codes, _ = self(x)
        return x_hat, codes

    @torch.no_grad()
    def normalize_decoder(self) -> None:
        """Rescale decoder columns to unit norm."""
        self.W_dec /= self.W_dec.norm(dim=0, keepdim=True).clamp_min(1e-12)

    @torch.no_grad()
    def remove_parallel_decoder_grad(self) -> None:
        """Drop the gradient component along each unit-norm column: it would only change the norm."""
        if self.W_dec.grad is not None:
            parallel = (self.W_dec.grad * self.W_dec).sum(0, keepdim=True)
            self.W_dec.grad -= parallel * self.W_dec

    def config(self) -> dict:
        dense = {"dense_directions": self.dense_directions} if self.dense_directions else {}
        return {"d_in": self.d_in, "n_latents": self.n_latents, "k": self.k} | dense

    def save(self, path: str | Path, dtype: torch.dtype = torch.float32) -> None:
        """Write `sae.safetensors` (in `dtype`) and `config.json` into directory `path`."""
        path = Path(path)
        write_safetensors(path / "sae.safetensors", {k: v.to(dtype) for k, v in self.state_dict().items()})
        write_json(path / "config.json", self.config())

    @classmethod
    def load(cls, path: str | Path) -> "TopKSAE":
        """Load what `save` wrote; shapes are checked against the config."""
        path = Path(path)
        try:
            config = json.loads((path / "config.json").read_text())
            sae = cls(int(config["d_in"]), int(config["n_latents"]), int(config["k"]), int(config.get("dense_directions", 0)))
            sae.load_state_dict({k: v.float() for k, v in load_file(path / "sae.safetensors").items()})
        except FileNotFoundError as err:
            raise ExplorerError(f"SAE file missing: {err.filename}") from err
        except (RuntimeError, KeyError, ValueError, TypeError, SafetensorError) as err:  # JSONDecodeError is a ValueError
            raise ExplorerError(f"SAE in {path} is corrupt or does not match its config.json: {err}") from err
        return sae.eval()
