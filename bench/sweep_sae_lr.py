"""SAE trainer: peak learning rate x schedule sweep, beside EleutherAI sparsify's SparseCoder at its defaults.

One run trains, on the same batches, our trainer (backend/method/sae_train.py: Adam, 100 warm-up
steps, AuxK) at multiples of the default peak lr (SAETrainConfig.learning_rate: lr_base 2e-4 at
16384 latents and d_in 2560, scaled by 1/sqrt(n_latents/16384) and by 2560/d_in), and with
--width-constants at a candidate rule with another power of d_in (peak lr = c / sqrt(n_latents/16384)
/ d_in**p, --width-exponent p, 0.5 unless given: Adam moves each of a decoder column's d_in entries
by about lr, so at p 0.5 the column moves alike at any width), with
decay_share 0 (constant after warm-up) and 0.2 (the last 20 % of
the steps decay linearly to 0), and sparsify's own training loop (SignSGD wrapped by
schedule-free with momentum 0.95, lr 5e-3/sqrt(n_latents/16384), b_dec = mean of the first
batch, decoder re-normalized before every step, AuxK off as in its TrainConfig) fed our
batches instead of a language model. Each config runs for every SAE seed; seed s draws the SAE's
initialization with s and the batch order with `tensor_batches(x, batch, 1000 * s)` (the factor
keeps one seed's epoch orders out of the next seed's), so within a seed every config sees the
same batches. Reported per config: mean ± std over seeds of held-out FVU, atom recovery (planted
data: share of the true atoms whose best decoder direction has cosine >= 0.9), dead share
(latents that fire on no held-out row) and training rows/s; then the winner, the config with the
lowest mean held-out FVU among those with <= 1 % dead latents. Dead latents are also counted on the training rows,
where a latent too rare for the held-out rows may still fire.

Datasets:
- planted: d 256, 2048 unit-norm Gaussian atoms; each row is sum_i c_i atom_i over a Bernoulli
  (16/2048) support (about 16 atoms per row) with c_i = 0.5 + |N(0, 1)|; the training rows and
  20k held-out rows come from two generators seeded by --data-seed. SAE: 2048 latents, k 16.
- demo: residualized trajectory rows (d_in 2560 = 20 steps x 128 channels at up_ft1) of the
  shapes demo model, made once by `python -m backend.build --stages collect,dynamics` into
  --work-dir (reused on later runs; --demo-images 240 took about 2.5 min on 2 busy cores). The
  last --demo-heldout-images images are held out; the dynamics are fitted on all collected
  images, as the build does. SAE: 1024 latents, k 32 (the shipped demo's).

sparsify is an optional benchmark-only import (`pip install eai-sparsify`; it is no project
dependency); without it its rows are skipped with a note. On the CPU the run uses one torch
thread by default: on the shared 2-core machine two threads waiting on each other made a
training step up to 10x slower.

Usage: python -m bench.sweep_sae_lr [--datasets planted,demo] [--planted-rows 250000] [--planted-epochs 3]
       [--demo-images 240] [--demo-heldout-images 40] [--demo-epochs 5] [--multipliers 1 4 8 16 32]
       [--demo-multipliers 1 4 16] [--width-constants 0.01 0.02] [--width-exponent 0.5] [--decay-shares 0 0.2] [--seeds 3] [--work-dir /tmp/sweep-sae-lr]
       [--aux-coefs 0.03125 0.125] [--dead-after 200000 50000]
Every config runs at every AuxK setting (coefficient x dead threshold; the trainer's defaults alone unless given);
an empty --multipliers or --demo-multipliers runs only the width rule's constants.
The defaults are sized for about 35 min on 2 shared CPU cores (the measured run: 31.5 min with
the demo rows cached; docs/BENCHMARKS.md): planted 250k training rows x 3 epochs = 735 steps
(the full size is --planted-rows 500000, 1467 steps), demo 200 + 40 images x 5 epochs = 250
steps with the grid cut to x1, x4, x16 (a demo step costs about 6x a planted one).
"""

import argparse
import math
import os
import statistics
import subprocess
import sys
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path

import torch
from safetensors.torch import load_file
from torch import Tensor

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from backend.diffusion.collect import read_shards  # noqa: E402
from backend.method.dynamics import LinearDynamics  # noqa: E402
from backend.method.encodings import TrajectoryEncoding  # noqa: E402
from backend.method.sae_train import LR_REFERENCE_WIDTH, SAETrainConfig, fraction_of_variance_unexplained, tensor_batches, train_sae  # noqa: E402
from bench.common import device_name  # noqa: E402

SPARSIFY = "sparsify defaults"


@dataclass
class Dataset:
    """Training and held-out rows, the SAE shape to train on them, and (planted only) the true atoms."""

    name: str
    train: Tensor
    heldout: Tensor
    n_latents: int
    k: int
    epochs: int
    multipliers: list[float]
    atoms: Tensor | None = None


@dataclass
class Result:
    fvu: float
    recovery: float | None
    dead: float
    dead_train: float
    rows_per_s: float


# ---- data ----------------------------------------------------------------------------------


def planted_rows(atoms: Tensor, n: int, active: float, generator: torch.Generator, chunk: int = 20_000) -> Tensor:
    """n rows, each a nonnegative combination of about `active` atoms: Bernoulli support, weights 0.5 + |N(0, 1)|."""
    n_atoms, d = atoms.shape
    out = torch.empty(n, d)
    for start in range(0, n, chunk):
        m = min(chunk, n - start)
        support = torch.rand(m, n_atoms, generator=generator) < active / n_atoms
        rows, cols = support.nonzero(as_tuple=True)
        weights = 0.5 + torch.randn(len(rows), generator=generator).abs()
        coef = torch.sparse_coo_tensor(torch.stack([rows, cols]), weights, (m, n_atoms), check_invariants=False)
        out[start : start + m] = torch.sparse.mm(coef, atoms)
    return out


def planted_dataset(args: argparse.Namespace) -> Dataset:
    generator = torch.Generator().manual_seed(args.data_seed)
    atoms = torch.randn(args.planted_atoms, args.planted_dim, generator=generator)
    atoms /= atoms.norm(dim=1, keepdim=True)
    train = planted_rows(atoms, args.planted_rows, args.planted_active, generator)
    heldout = planted_rows(atoms, args.planted_heldout, args.planted_active, torch.Generator().manual_seed(args.data_seed + 1))
    return Dataset("planted", train, heldout, args.planted_latents, args.planted_k, args.planted_epochs, args.multipliers, atoms)


def demo_dataset(args: argparse.Namespace) -> Dataset:
    """Residualized rows of the demo model; the build's collect and dynamics stages run once and are reused."""
    root = Path(args.work_dir) / f"demo-{args.demo_images}"
    build = root / "build"
    if not (build / "dynamics.safetensors").exists():
        started = time.perf_counter()
        command = [sys.executable, "-m", "backend.build", "--model", args.model, "--out", str(root / "bundle"),
                   "--work-dir", str(build), "--shapes-prompts", str(args.demo_images), "--num-steps", "20",
                   "--stages", "collect,dynamics"]
        print("collecting:", " ".join(command[1:]), flush=True)
        env = os.environ | ({"OMP_NUM_THREADS": str(args.threads)} if args.threads else {})  # 1 thread: 7x faster on the busy machine
        subprocess.run(command, check=True, cwd=ROOT, env=env, stdout=subprocess.DEVNULL)
        print(f"collected {args.demo_images} images in {time.perf_counter() - started:.0f} s", flush=True)
    encoding = TrajectoryEncoding("residualized", LinearDynamics.from_state_dict(load_file(build / "dynamics.safetensors")))
    first_heldout = args.demo_images - args.demo_heldout_images
    train, heldout = [], []
    for shard in read_shards(build / "collect"):
        rows = encoding.to_rows(shard["traj"].float())
        held = shard["image_id"] >= first_heldout
        train.append(rows[~held])
        heldout.append(rows[held])
    return Dataset("demo", torch.cat(train), torch.cat(heldout), args.demo_latents, args.demo_k, args.demo_epochs,
                   args.demo_multipliers)


# ---- metrics -------------------------------------------------------------------------------


@torch.no_grad()
def evaluate(reconstruct: Callable[[Tensor], tuple[Tensor, Tensor]], directions: Tensor, data: Dataset,
             device: torch.device, chunk: int = 4096) -> tuple[float, float | None, float, float]:
    """(held-out FVU, atom recovery at cos >= 0.9 or None, dead share on held-out rows, dead share on training rows);
    `reconstruct(x)` gives (x̂, fired mask). A latent rare enough to miss the held-out rows may still fire on training ones."""
    x, parts = data.heldout, []
    fired = torch.zeros(directions.shape[0], dtype=torch.bool)
    for part in x.split(chunk):
        x_hat, fired_part = reconstruct(part.to(device))
        parts.append(x_hat.float().cpu())
        fired |= fired_part.cpu()
    fired_train = torch.zeros_like(fired)
    for part in data.train.split(chunk):
        fired_train |= reconstruct(part.to(device))[1].cpu()
    fvu = float(fraction_of_variance_unexplained(x, torch.cat(parts)))
    recovery = None
    if data.atoms is not None:
        unit = directions.float().cpu()
        unit = unit / unit.norm(dim=1, keepdim=True).clamp_min(1e-12)
        recovery = float(((data.atoms @ unit.T).max(dim=1).values >= 0.9).float().mean())
    return fvu, recovery, 1 - float(fired.float().mean()), 1 - float(fired_train.float().mean())


# ---- our trainer ---------------------------------------------------------------------------


def steps_per_epoch(data: Dataset, batch: int) -> int:
    return math.ceil(len(data.train) / batch)


def width_rule_lr(constant: float, n_latents: int, d_in: int, exponent: float) -> float:
    """A candidate rule: peak lr = constant / sqrt(n_latents / 16384) / d_in**exponent (the default's latent scaling, another width's)."""
    return SAETrainConfig(n_latents=n_latents, lr_base=constant).learning_rate(LR_REFERENCE_WIDTH) / d_in**exponent


def run_ours(data: Dataset, lr: float, decay_share: float, aux: "AuxSetting", seed: int, batch: int, device: torch.device) -> Result:
    config = SAETrainConfig(n_latents=data.n_latents, k=data.k, lr=lr, epochs=data.epochs, warmup_steps=100,
                            decay_share=decay_share, aux_coef=aux.coef, dead_after_tokens=aux.dead_after, seed=seed)
    batches = tensor_batches(data.train, batch, 1000 * seed)
    started = time.perf_counter()
    sae, _ = train_sae(batches, data.train.shape[1], config, data.train[:4096], progress=False, device=device,
                       total_steps=data.epochs * steps_per_epoch(data, batch))
    seconds = time.perf_counter() - started
    sae = sae.to(device)

    def reconstruct(x: Tensor) -> tuple[Tensor, Tensor]:
        codes = sae.encode(x)
        return sae.decode(codes), (codes > 0).any(0)

    return Result(*evaluate(reconstruct, sae.W_dec.T, data, device), data.epochs * len(data.train) / seconds)


# ---- sparsify ------------------------------------------------------------------------------


def sparsify_available() -> bool:
    try:
        import schedulefree  # noqa: F401
        import sparsify  # noqa: F401
    except ImportError as err:
        print(f"note: sparsify not importable ({err}); its rows are skipped (pip install eai-sparsify)")
        return False
    return True


def run_sparsify(data: Dataset, seed: int, batch: int, device: torch.device) -> Result:
    """sparsify.Trainer.fit's steps for loss_fn 'fvu' and optimizer 'signum' at TrainConfig's defaults, on our batches."""
    from schedulefree import ScheduleFreeWrapper
    from sparsify import SparseCoder, SparseCoderConfig, TrainConfig
    from sparsify.sign_sgd import SignSGD

    cfg = TrainConfig(SparseCoderConfig(num_latents=data.n_latents, k=data.k), batch_size=batch)
    torch.manual_seed(seed)
    sae = SparseCoder(data.train.shape[1], cfg.sae, device, dtype=torch.float32)
    lr = cfg.lr or 5e-3 / (sae.num_latents / 2**14) ** 0.5
    optimizer = ScheduleFreeWrapper(SignSGD([{"params": sae.parameters(), "lr": lr}]), momentum=0.95)
    optimizer.train()
    tokens_since_fired = torch.zeros(sae.num_latents, dtype=torch.long, device=device)
    batches: Callable[[int], Iterable[Tensor]] = tensor_batches(data.train, batch, 1000 * seed)
    step = 0
    started = time.perf_counter()
    for epoch in range(data.epochs):
        for x in batches(epoch):
            x = x.to(device)
            if step == 0:  # sparsify centres the pre-activations on the first batch's mean
                sae.b_dec.data = x.mean(0).to(sae.dtype)
            if cfg.sae.normalize_decoder:
                sae.set_decoder_norm_to_unit_norm()
            dead = tokens_since_fired > cfg.dead_feature_threshold if cfg.auxk_alpha > 0 else None
            out = sae(x=x, y=x, dead_mask=dead, total_variance=(x - x.mean(0)).pow(2).sum())
            did_fire = torch.zeros(sae.num_latents, dtype=torch.bool, device=device)
            did_fire[out.latent_indices.flatten()] = True
            loss = out.fvu + cfg.auxk_alpha * out.auxk_loss + out.multi_topk_fvu / 8
            loss.div(cfg.grad_acc_steps * cfg.micro_acc_steps).backward()
            sae.remove_gradient_parallel_to_decoder_directions()
            optimizer.step()
            optimizer.zero_grad()
            with torch.no_grad():
                tokens_since_fired += x.shape[0]
                tokens_since_fired[did_fire] = 0
            step += 1
    seconds = time.perf_counter() - started
    optimizer.eval()  # the averaged weights, as sparsify saves them

    @torch.no_grad()
    def reconstruct(x: Tensor) -> tuple[Tensor, Tensor]:
        acts, indices, _ = sae.encode(x)
        fired = torch.zeros(sae.num_latents, dtype=torch.bool, device=x.device)
        fired[indices[acts > 0]] = True
        return sae.decode(acts, indices), fired

    return Result(*evaluate(reconstruct, sae.W_dec.data, data, device), data.epochs * len(data.train) / seconds)


# ---- report --------------------------------------------------------------------------------


def mean_std(values: list[float], scale: float = 1.0, digits: int = 3) -> str:
    mean = statistics.fmean(values) * scale
    std = statistics.stdev(values) * scale if len(values) > 1 else 0.0
    return f"{mean:.{digits}f} ± {std:.{digits}f}"


@dataclass(frozen=True)
class AuxSetting:
    """AuxK's loss coefficient and the rows without firing after which a latent counts as dead (and AuxK revives it)."""

    coef: float = SAETrainConfig.aux_coef
    dead_after: int = SAETrainConfig.dead_after_tokens

    def __str__(self) -> str:
        default = AuxSetting()
        return "".join([f", aux {self.coef:g}" * (self.coef != default.coef),
                        f", dead after {self.dead_after} rows" * (self.dead_after != default.dead_after)])


def label(multiplier: float, decay_share: float, aux: AuxSetting) -> str:
    return f"ours x{multiplier:g}, decay {decay_share:g}{aux}"


def width_label(constant: float, exponent: float, decay_share: float, aux: AuxSetting) -> str:
    power = "" if exponent == 0.5 else f" / d_in^{exponent:g}"
    return f"ours width rule c {constant:g}{power}, decay {decay_share:g}{aux}"


def report(data: Dataset, results: dict[str, list[Result]], peak_lr: dict[str, float]) -> None:
    print(f"\n{data.name}: {len(data.train)} train rows, {len(data.heldout)} held-out rows, d_in {data.train.shape[1]}, "
          f"{data.n_latents} latents, k {data.k}, {data.epochs} epochs")
    print("| config | peak lr | held-out FVU | recovery cos>=0.9 | dead (held out) | dead (train) | rows/s |")
    print("| --- | ---: | ---: | ---: | ---: | ---: | ---: |")
    for name, runs in results.items():
        recovery = "-" if runs[0].recovery is None else mean_std([r.recovery for r in runs], 100, 1) + " %"
        print(f"| {name} | {peak_lr[name]:.2e} | {mean_std([r.fvu for r in runs])} | {recovery} | "
              f"{mean_std([r.dead for r in runs], 100, 1)} % | {mean_std([r.dead_train for r in runs], 100, 1)} % | "
              f"{mean_std([r.rows_per_s for r in runs], 1, 0)} |")
    eligible = {name: runs for name, runs in results.items() if statistics.fmean(r.dead for r in runs) <= 0.01}
    if not eligible:
        print(f"{data.name}: no config has <= 1 % dead latents")
        return
    winner = min(eligible, key=lambda name: statistics.fmean(r.fvu for r in eligible[name]))
    win = results[winner]
    print(f"{data.name} winner (lowest mean held-out FVU, <= 1 % dead): {winner}, peak lr {peak_lr[winner]:.2e}")
    if SPARSIFY in results and winner != SPARSIFY:
        ref = results[SPARSIFY]
        parts = [f"FVU {statistics.fmean(r.fvu for r in win):.3f} vs {statistics.fmean(r.fvu for r in ref):.3f}"]
        if win[0].recovery is not None:
            parts.append(f"recovery {100 * statistics.fmean(r.recovery for r in win):.1f} % vs "
                         f"{100 * statistics.fmean(r.recovery for r in ref):.1f} %")
        parts.append(f"dead {100 * statistics.fmean(r.dead for r in win):.1f} % vs {100 * statistics.fmean(r.dead for r in ref):.1f} %")
        speed = statistics.fmean(r.rows_per_s for r in win) / statistics.fmean(r.rows_per_s for r in ref)
        parts.append(f"speed {speed:.2f}x")
        print(f"{data.name} winner vs {SPARSIFY}: " + ", ".join(parts))


def sweep(data: Dataset, args: argparse.Namespace, device: torch.device, with_sparsify: bool, started: float) -> None:
    base_lr = SAETrainConfig(n_latents=data.n_latents).learning_rate(data.train.shape[1])
    auxes = [AuxSetting(coef, dead_after) for coef in args.aux_coefs for dead_after in args.dead_after]
    configs = [(label(m, s, a), m * base_lr, s, a) for m in data.multipliers for s in args.decay_shares for a in auxes]
    configs += [(width_label(c, args.width_exponent, s, a), width_rule_lr(c, data.n_latents, data.train.shape[1], args.width_exponent), s, a)
                for c in args.width_constants for s in args.decay_shares for a in auxes]
    peak_lr = {name: lr for name, lr, _, _ in configs}
    if with_sparsify:
        peak_lr[SPARSIFY] = 5e-3 / (data.n_latents / 2**14) ** 0.5
    results: dict[str, list[Result]] = {name: [] for name in peak_lr}
    print(f"{data.name}: {len(configs)} configs{' + sparsify' if with_sparsify else ''} x {args.seeds} seeds, "
          f"{data.epochs * steps_per_epoch(data, args.batch)} steps each", flush=True)
    for seed in range(args.seeds):
        runs = [(name, lambda lr=lr, s=s, a=a, seed=seed: run_ours(data, lr, s, a, seed, args.batch, device))
                for name, lr, s, a in configs]
        if with_sparsify:
            runs.append((SPARSIFY, lambda seed=seed: run_sparsify(data, seed, args.batch, device)))
        for name, run in runs:
            result = run()
            results[name].append(result)
            recovery = "" if result.recovery is None else f", recovery {100 * result.recovery:.1f} %"
            print(f"[{time.perf_counter() - started:6.0f} s] {data.name} seed {seed} {name}: held-out FVU {result.fvu:.4f}"
                  f"{recovery}, dead {100 * result.dead:.1f} % (train {100 * result.dead_train:.1f} %), {result.rows_per_s:.0f} rows/s", flush=True)
    report(data, results, peak_lr)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--datasets", default="planted,demo", help="comma-separated: planted, demo")
    parser.add_argument("--multipliers", type=float, nargs="*", default=[1, 4, 8, 16, 32],
                        help="peak lr as multiples of the default (SAETrainConfig.learning_rate)")
    parser.add_argument("--demo-multipliers", type=float, nargs="*", default=[1, 4, 16],
                        help="the demo's grid (smaller: a demo step costs 6x a planted one)")
    parser.add_argument("--width-constants", type=float, nargs="*", default=[],
                        help="also the width rule: peak lr = c / sqrt(n_latents / 16384) / d_in**exponent, for each c")
    parser.add_argument("--width-exponent", type=float, default=0.5, help="the width rule's power of d_in")
    parser.add_argument("--decay-shares", type=float, nargs="+", default=[0.0, 0.2])
    parser.add_argument("--aux-coefs", type=float, nargs="+", default=[SAETrainConfig.aux_coef], help="AuxK loss coefficients")
    parser.add_argument("--dead-after", type=int, nargs="+", default=[SAETrainConfig.dead_after_tokens],
                        help="rows without firing after which a latent is dead and AuxK trains it")
    parser.add_argument("--seeds", type=int, default=3)
    parser.add_argument("--batch", type=int, default=1024)
    parser.add_argument("--data-seed", type=int, default=0)
    parser.add_argument("--planted-rows", type=int, default=250_000)
    parser.add_argument("--planted-heldout", type=int, default=20_000)
    parser.add_argument("--planted-epochs", type=int, default=3)
    parser.add_argument("--planted-dim", type=int, default=256)
    parser.add_argument("--planted-atoms", type=int, default=2048)
    parser.add_argument("--planted-active", type=float, default=16, help="expected atoms per row")
    parser.add_argument("--planted-latents", type=int, default=2048)
    parser.add_argument("--planted-k", type=int, default=16)
    parser.add_argument("--model", default="checkpoints/shapes-model")
    parser.add_argument("--work-dir", default="/tmp/sweep-sae-lr", help="where the demo's trajectories are collected once")
    parser.add_argument("--demo-images", type=int, default=240, help="images collected, held-out ones included")
    parser.add_argument("--demo-heldout-images", type=int, default=40)
    parser.add_argument("--demo-epochs", type=int, default=5)
    parser.add_argument("--demo-latents", type=int, default=1024)
    parser.add_argument("--demo-k", type=int, default=32)
    parser.add_argument("--no-sparsify", action="store_true")
    parser.add_argument("--threads", type=int, default=1, help="torch threads on the CPU (0: torch's default)")
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    args = parser.parse_args()
    device = torch.device(args.device)
    if device.type == "cpu" and args.threads:
        torch.set_num_threads(args.threads)
    started = time.perf_counter()
    print(f"device: {device_name()}; torch {torch.__version__}", flush=True)
    with_sparsify = not args.no_sparsify and sparsify_available()
    makers = {"planted": planted_dataset, "demo": demo_dataset}
    for name in [n.strip() for n in args.datasets.split(",") if n.strip()]:
        data = makers[name](args)
        print(f"{name}: data ready after {time.perf_counter() - started:.0f} s", flush=True)
        sweep(data, args, device, with_sparsify, started)
    print(f"\ntotal wall time {time.perf_counter() - started:.0f} s")


if __name__ == "__main__":
    main()
