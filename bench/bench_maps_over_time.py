"""Maps over denoising time (TopK codes of every prefix): the incremental path vs encoding each prefix, same run.

    python -m bench.bench_maps_over_time [--bundle checkpoints/shapes-bundle] [--model PATH] [--repeats 30]

The baseline zeroes the later blocks of the SAE input for each recorded step and encodes that
prefix with the SAE (T full encodings); `Bundle.maps_over_time` adds one block's contribution
to a running sum per step (the cost of one encoding) and reuses the run's codes for the last
step. Both are timed on the trajectory of one generated image, and their maps are compared.
Also printed: one full encoding, and the whole timeline a latent page shows (maps, the decoded
x0 estimate of each step, overlays) on a cached run.
"""

import argparse
import statistics

import torch

from app import DEFAULT_BUNDLE
from backend.method.sae import TopKSAE
from backend.serving.opener import open_bundle
from bench.common import device_name, time_calls
from ui.timeline import timelines

PROMPT = "a large red circle in the center on a black background"


def maps_by_encoding_each_prefix(sae: TopKSAE, rows: torch.Tensor, steps: int, latents: list[int]) -> torch.Tensor:
    """The baseline: for each step t, encode the input with blocks after t set to zero: Tensor[L, T, P]."""
    blocks = rows.reshape(rows.shape[0], steps, -1)
    frames = []
    for t in range(steps):
        prefix = blocks.clone()
        prefix[:, t + 1 :] = 0
        frames.append(sae.encode(prefix.flatten(1))[:, latents])
    return torch.stack(frames).permute(2, 0, 1)


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--bundle", default=DEFAULT_BUNDLE)
    parser.add_argument("--model", default=None)
    parser.add_argument("--repeats", type=int, default=30)
    args = parser.parse_args(argv)

    opened = open_bundle(args.bundle, args.model)
    bundle, generator = opened.bundle, opened.bundle.generator
    run = generator.base(PROMPT, 0)
    latent = int(run.codes.sum(0).argmax())
    steps = bundle.encoding.steps
    with torch.no_grad():
        rows = bundle.encoding.to_rows(run.traj)
        ours = generator.maps_over_time(run, [latent]).flatten(2)
        naive = maps_by_encoding_each_prefix(bundle.sae, rows, steps, [latent])
        timed = {
            "incremental (Bundle.maps_over_time)": lambda: generator.maps_over_time(run, [latent]),
            "each prefix encoded (baseline)": lambda: maps_by_encoding_each_prefix(bundle.sae, rows, steps, [latent]),
            "one full encoding (Bundle.codes)": lambda: bundle.codes(run.traj),
            "latent page timeline on a cached run": lambda: timelines(generator, run, [latent], [""]),
        }
        medians = {name: statistics.median(time_calls(fn, args.repeats)) * 1e3 for name, fn in timed.items()}
    print(f"device: {device_name()}; bundle {args.bundle}: {steps} steps, {bundle.n_latents} latents, k {bundle.sae.k}, "
          f"{run.traj.shape[0]} positions")
    print(f"largest difference between the two paths' maps: {float((ours - naive).abs().max()):.2e}")
    for name, ms in medians.items():
        print(f"{name:<40}{ms:>10.2f} ms")
    baseline = medians["each prefix encoded (baseline)"]
    print(f"speed-up of the incremental path: {baseline / medians['incremental (Bundle.maps_over_time)']:.1f}x")


if __name__ == "__main__":
    main()
