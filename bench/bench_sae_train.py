"""SAE training step: the dense reference vs the sparse fast path (backend/method/sae_kernels.py), same run, same data.

Prints rows/s for each, the ratio, and how far the two are apart after the same steps.
Usage: python bench/bench_sae_train.py [--d-in 2560] [--latents 4096] [--k 32] [--batch 1024] [--steps 5] [--device cpu]
GPU at SD 1.5 scale: --d-in 12800 --latents 16384 --k 32 --batch 4096 --device cuda
"""

import argparse
import copy
import statistics
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from backend.method.sae import TopKSAE  # noqa: E402
from backend.method.sae_train import SAETrainConfig, SAETrainer  # noqa: E402
from bench.common import device_name, time_calls  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--d-in", type=int, default=2560)
    parser.add_argument("--latents", type=int, default=4096)
    parser.add_argument("--k", type=int, default=32)
    parser.add_argument("--batch", type=int, default=1024)
    parser.add_argument("--steps", type=int, default=5)
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    args = parser.parse_args()
    device = torch.device(args.device)
    torch.manual_seed(0)
    batches = [torch.randn(args.batch, args.d_in, device=device) for _ in range(4)]
    sae = TopKSAE(args.d_in, args.latents, args.k).to(device)
    trainers = {}
    for name, fast in (("reference (dense)", False), ("fast (sparse)", True)):
        trainers[name] = SAETrainer(copy.deepcopy(sae), SAETrainConfig(n_latents=args.latents, k=args.k, fast=fast, warmup_steps=1))
    sync = torch.cuda.synchronize if device.type == "cuda" else (lambda: None)
    results = {}
    fvu = {}
    for name, trainer in trainers.items():
        it = iter(range(10**9))
        bf16 = device.type == "cuda" and trainer.config.fast  # as train_sae runs it on a GPU

        def step(trainer=trainer, bf16=bf16):
            with torch.autocast("cuda", dtype=torch.bfloat16, enabled=bf16):
                fvu[name] = trainer.step(batches[next(it) % len(batches)])["fvu"]
            sync()

        results[name] = args.batch / statistics.median(time_calls(step, args.steps, warmup=1))
    reference, fast = trainers.values()
    gap = max((p - q).abs().max().item() for p, q in zip(reference.sae.parameters(), fast.sae.parameters()))
    print(f"device: {device_name()}; d_in {args.d_in}, {args.latents} latents, k {args.k}, batch {args.batch}")
    for name, rate in results.items():
        print(f"{name:<20} {rate:>10.0f} rows/s   last FVU {fvu[name]:.4f}")
    if device.type == "cuda":
        print("the fast path ran under bf16 autocast, the reference in fp32")
    print(f"speed-up: {results['fast (sparse)'] / results['reference (dense)']:.2f}x; max parameter gap after {args.steps + 1} steps: {gap:.2e}")


if __name__ == "__main__":
    main()
