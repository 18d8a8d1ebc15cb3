"""Fast paths for TopKSAE training: only the forward encode is dense, the rest touches k latents per row.

The reference trainer differentiates through dense codes: decoding, and the backward of both
encoder and decoder, each cost a full N × d × n product. Here the k selected pre-activations
are recomputed with a sparse backward, and decoding is an embedding_bag over the selected
decoder columns, so those steps cost N × k × d. Tested against the reference in tests/test_sae_kernels.py.
"""

import torch
import torch.nn.functional as F
from torch import Tensor

from backend.method.sae import TopKSAE


class SparseGatherLinear(torch.autograd.Function):
    """values[i, s] = (x[i] − c) · W[idx[i, s]] + b[idx[i, s]], with gradients computed sparsely.

    x itself gets no gradient (it is data); the centre c (b_pre) gets −Σ_i,s g[i, s] W[idx[i, s]],
    which is −(grad of b) @ W: one n × d product instead of an N × n × d one.
    """

    @staticmethod
    def forward(ctx, x: Tensor, centre: Tensor, W: Tensor, b: Tensor, idx: Tensor, pre: Tensor) -> Tensor:
        ctx.save_for_backward(x, centre, W, idx)
        return pre.gather(1, idx)  # the dense pre-activations were computed once, without autograd

    @staticmethod
    def backward(ctx, grad_values: Tensor):
        x, centre, W, idx = ctx.saved_tensors
        n_latents = W.shape[0]
        flat_idx, flat_grad = idx.flatten(), grad_values.flatten()
        rows = torch.arange(idx.shape[0], device=idx.device).repeat_interleave(idx.shape[1])
        grad_pre_t = torch.sparse_coo_tensor(torch.stack([flat_idx, rows]), flat_grad, (n_latents, idx.shape[0]), check_invariants=False)  # [n, N]
        grad_W = torch.sparse.mm(grad_pre_t, x - centre)
        grad_b = torch.zeros(n_latents, device=W.device, dtype=flat_grad.dtype).index_add_(0, flat_idx, flat_grad)
        return None, -(grad_b @ W), grad_W, grad_b, None, None


def encode_selected(sae: TopKSAE, x: Tensor, idx: Tensor, pre: Tensor) -> Tensor:
    """ReLU'd pre-activations of the latents `idx` [N, k] (differentiable in the SAE's weights); `pre` is their detached dense value."""
    return SparseGatherLinear.apply(x, sae.b_pre, sae.W_enc, sae.b_enc, idx, pre).relu()


def decode_selected(sae: TopKSAE, idx: Tensor, values: Tensor) -> Tensor:
    """Σ_s values[:, s] · W_dec[:, idx[:, s]] (no bias): Tensor[N, d_in]."""
    return F.embedding_bag(idx, sae.W_dec.T.contiguous(), per_sample_weights=values, mode="sum")  # row-major: 10x faster on CPU
