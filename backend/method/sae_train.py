"""Training loop for TopKSAE: Adam with warm-up, unit-norm decoder, AuxK loss against dead latents."""

import logging
from collections.abc import Callable, Iterable, Iterator
from dataclasses import asdict, dataclass
from pathlib import Path

import torch
import torch.distributed as dist
from safetensors.torch import load_file
from torch import Tensor
from tqdm.auto import tqdm

from backend.io import write_safetensors
from backend.method.sae import TopKSAE, topk_codes
from backend.method.sae_kernels import decode_selected, encode_selected

log = logging.getLogger(__name__)


LR_REFERENCE_WIDTH = 2560  # the demo's row width (20 steps × 128 channels), where lr_base was checked


@dataclass
class SAETrainConfig:
    """Hyperparameters of one SAE training run."""

    n_latents: int = 1024
    k: int = 32
    lr: float | None = None  # None: lr_base scaled to the SAE's shape (learning_rate)
    lr_base: float = 2e-4  # at 16384 latents (Gao et al.) and LR_REFERENCE_WIDTH input dims
    epochs: int = 1
    warmup_steps: int = 100
    decay_share: float = 0.2  # the last this share of all steps decays the learning rate linearly to 0 (needs total_steps)
    aux_k: int | None = None  # None: min(d_in // 2, n_latents // 2)
    aux_coef: float = 1 / 32
    dead_after_tokens: int = 200_000  # a latent that fired on none of the last this many rows is dead
    seed: int = 0
    fast: bool = True  # sparse backward and decode (backend/method/sae_kernels.py); False: the dense reference

    def learning_rate(self, d_in: int) -> float:
        """The peak learning rate for rows of width d_in: lr_base · √(16384 / n_latents) (Gao et al.) · LR_REFERENCE_WIDTH / d_in.

        The 1/d_in factor comes from bench/sweep_sae_lr.py: the best rate on planted data falls 4 to 9
        times from d_in 256 to 2560, and a rule anchored at the demo's rate (the one with the fewest dead
        latents on its real rows) reaches planted data's best at 256 only with the full power
        (docs/BENCHMARKS.md).
        """
        if self.lr is not None:
            return self.lr
        return self.lr_base / (self.n_latents / 16384) ** 0.5 * (LR_REFERENCE_WIDTH / d_in)

    def learning_rate_at(self, step: int, d_in: int, total_steps: int | None = None) -> float:
        """Linear warm-up to the peak, then constant, then (with `total_steps`) a linear decay over the last `decay_share`."""
        factor = min(1.0, (step + 1) / max(1, self.warmup_steps))
        if total_steps and self.decay_share > 0:
            decay_steps = max(1, round(self.decay_share * total_steps))
            factor = min(factor, max(0.0, (total_steps - step) / decay_steps))
        return self.learning_rate(d_in) * factor


def distributed() -> bool:
    """Whether this process is one rank of several (torchrun)."""
    return dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1


def fraction_of_variance_unexplained(x: Tensor, x_hat: Tensor) -> Tensor:
    """Σ‖x − x̂‖² / Σ‖x − mean(x)‖² over the batch."""
    return (x - x_hat).pow(2).sum() / (x - x.mean(0)).pow(2).sum().clamp_min(1e-12)


def geometric_median(x: Tensor, iterations: int = 30) -> Tensor:
    """Weiszfeld's iteration; a robust centre for b_pre (Gao et al. initialize it so)."""
    median = x.mean(0)
    for _ in range(iterations):
        weights = 1 / (x - median).norm(dim=1).clamp_min(1e-8)
        median = (weights[:, None] * x).sum(0) / weights.sum()
    return median


def aux_k_loss(sae: TopKSAE, x: Tensor, x_hat: Tensor, pre: Tensor, dead: Tensor, aux_k: int) -> Tensor:
    """Normalized MSE of the dead latents' best reconstruction of the main model's error."""
    n_dead = int(dead.sum())
    if n_dead == 0:
        return x.new_zeros(())
    error = (x - x_hat).detach()
    dead_pre = pre.masked_fill(~dead, float("-inf"))
    aux_codes = topk_codes(dead_pre, min(aux_k, n_dead))  # masked entries come out as relu(-inf) = 0
    return fraction_of_variance_unexplained(error, aux_codes @ sae.W_dec.T)


class SAETrainer:
    """Owns the optimizer and the dead-latent bookkeeping for one TopKSAE."""

    def __init__(self, sae: TopKSAE, config: SAETrainConfig, total_steps: int | None = None):
        if sae.dense_directions:
            raise ValueError("an SAE with dense directions is trained on projected rows, then folded (backend/method/dense_part.py)")
        self.sae, self.config, self.total_steps = sae, config, total_steps
        self.optimizer = torch.optim.Adam(sae.parameters(), lr=config.learning_rate(sae.d_in), eps=6.25e-10, fused=True)  # one pass per tensor
        self.aux_k = config.aux_k or min(sae.d_in // 2, sae.n_latents // 2)
        self.rows_since_fired = torch.zeros(sae.n_latents, dtype=torch.long)
        self.steps = 0

    @torch.no_grad()
    def init_from_data(self, sample: Tensor) -> None:
        """b_pre from the geometric median of a data sample."""
        self.sae.b_pre.copy_(geometric_median(sample.float()))

    def dead_latents(self) -> Tensor:
        """Boolean mask of latents that have not fired recently."""
        return self.rows_since_fired > self.config.dead_after_tokens

    def _losses_reference(self, x: Tensor, dead: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        """(FVU, AuxK loss, fired mask) through dense codes: the readable path."""
        x_hat, codes, pre = self.sae(x)
        aux = aux_k_loss(self.sae, x, x_hat, pre, dead, self.aux_k)
        return fraction_of_variance_unexplained(x, x_hat), aux, (codes > 0).any(0)

    def _losses_fast(self, x: Tensor, dead: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        """The same losses, differentiating only through the k selected latents per row."""
        sae = self.sae
        with torch.no_grad():
            pre = sae.pre_activations(x)
        idx = pre.topk(sae.k, dim=1).indices
        values = encode_selected(sae, x, idx, pre)
        x_hat = decode_selected(sae, idx, values) + sae.b_pre
        fired = torch.zeros(sae.n_latents, dtype=torch.bool, device=x.device)
        fired[idx[values > 0]] = True
        n_dead = int(dead.sum())
        if n_dead == 0:
            return fraction_of_variance_unexplained(x, x_hat), x.new_zeros(()), fired
        error = (x - x_hat).detach()
        aux_idx = pre.masked_fill(~dead, float("-inf")).topk(min(self.aux_k, n_dead), dim=1).indices
        aux = fraction_of_variance_unexplained(error, decode_selected(sae, aux_idx, encode_selected(sae, x, aux_idx, pre)))
        return fraction_of_variance_unexplained(x, x_hat), aux, fired

    def step(self, x: Tensor) -> dict[str, float]:
        """One optimizer step on a batch Tensor[B, d_in]; returns its metrics."""
        sae, cfg = self.sae, self.config
        lr = cfg.learning_rate_at(self.steps, sae.d_in, self.total_steps)
        for group in self.optimizer.param_groups:
            group["lr"] = lr
        dead = self.dead_latents().to(x.device)
        fvu, aux, fired = (self._losses_fast if cfg.fast else self._losses_reference)(x, dead)
        loss = fvu + cfg.aux_coef * aux
        self.optimizer.zero_grad(set_to_none=True)
        loss.backward()
        rows = torch.tensor(x.shape[0], device=x.device)
        if distributed():  # data parallel: average gradients, pool firing and row counts over ranks
            world = dist.get_world_size()
            for param in sae.parameters():
                dist.all_reduce(param.grad)
                param.grad /= world
            fired = fired.to(torch.uint8)
            dist.all_reduce(fired, op=dist.ReduceOp.MAX)
            dist.all_reduce(rows)
        sae.remove_parallel_decoder_grad()
        self.optimizer.step()
        sae.normalize_decoder()

        self.rows_since_fired += int(rows)
        self.rows_since_fired[fired.bool().cpu()] = 0
        self.steps += 1
        return {"fvu": fvu.item(), "aux": aux.item(), "dead": int(dead.sum()), "lr": lr}

    def state_dict(self) -> dict[str, Tensor]:
        """Everything needed to resume: SAE weights, Adam moments, dead-latent counters."""
        state = {f"sae.{k}": v for k, v in self.sae.state_dict().items()}
        for i, param in enumerate(self.sae.parameters()):
            for key, value in self.optimizer.state.get(param, {}).items():
                state[f"adam.{i}.{key}"] = torch.as_tensor(value)
        return state | {"rows_since_fired": self.rows_since_fired, "steps": torch.tensor(self.steps)}

    def load_state_dict(self, state: dict[str, Tensor]) -> None:
        """Inverse of `state_dict`."""
        self.sae.load_state_dict({k[4:]: v for k, v in state.items() if k.startswith("sae.")})
        for i, param in enumerate(self.sae.parameters()):
            moments = {k.split(".")[2]: v for k, v in state.items() if k.startswith(f"adam.{i}.")}
            if moments:
                self.optimizer.state[param] = moments
        self.rows_since_fired = state["rows_since_fired"].clone()
        self.steps = int(state["steps"])


def tensor_batches(x: Tensor, batch_size: int, seed: int = 0) -> Callable[[int], Iterator[Tensor]]:
    """Epoch-wise shuffled batches of an in-memory Tensor[N, d_in]."""
    def epoch(index: int) -> Iterator[Tensor]:
        order = torch.randperm(x.shape[0], generator=torch.Generator().manual_seed(seed + index))
        for start in range(0, x.shape[0], batch_size):
            yield x[order[start : start + batch_size]]
    return epoch


def train_sae(
    batches: Callable[[int], Iterable[Tensor]],
    d_in: int,
    config: SAETrainConfig,
    init_sample: Tensor,
    progress: bool = True,
    checkpoint: Path | None = None,
    device: torch.device | str = "cpu",
    total_steps: int | None = None,
) -> tuple[TopKSAE, list[dict[str, float]]]:
    """Train a TopKSAE on streamed batches (`batches(epoch)` yields Tensor[B, d_in]); returns it and per-step metrics.

    With `checkpoint`, the trainer state is saved there after every epoch and a rerun resumes
    after the last finished epoch (batch order is a function of the epoch, so the result is
    the same as an uninterrupted run). On CUDA the forward pass runs in bf16 autocast.
    `total_steps` (over all epochs) lets the learning rate decay at the end (`config.decay_share`).
    """
    torch.manual_seed(config.seed)
    device = torch.device(device)
    sae = TopKSAE(d_in, config.n_latents, config.k).to(device)
    trainer = SAETrainer(sae, config, total_steps)
    trainer.init_from_data(init_sample.to(device))
    start_epoch, history = 0, []
    if checkpoint is not None and checkpoint.exists():
        state = load_file(checkpoint, device=str(device))
        trainer.load_state_dict(state)
        start_epoch = int(state["epochs_done"])
        log.info("resuming SAE training after epoch %d", start_epoch)
    log.info("training SAE %s", asdict(config))
    with tqdm(desc="SAE", unit="batch", disable=not progress) as bar:
        for epoch in range(start_epoch, config.epochs):
            for x in batches(epoch):
                with torch.autocast("cuda", dtype=torch.bfloat16, enabled=device.type == "cuda"):
                    metrics = trainer.step(x.to(device, torch.float32))
                history.append(metrics)
                bar.update()
                bar.set_postfix(fvu=f"{metrics['fvu']:.3f}", dead=metrics["dead"])
            if history:
                log.info("epoch %d: fvu %.4f, dead %d", epoch, history[-1]["fvu"], history[-1]["dead"])
            if checkpoint is not None and (not distributed() or dist.get_rank() == 0):
                write_safetensors(checkpoint, trainer.state_dict() | {"epochs_done": torch.tensor(epoch + 1)})
            if distributed():
                dist.barrier()
    return sae.cpu().eval(), history
