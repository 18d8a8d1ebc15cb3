"""Find latents for a concept (Bundle.contrast) on the demo bundle: base runs sampled together vs one at a time.

    python -m bench.bench_contrast [--captions 3 6] [--seeds 2] [--bundle ...] [--model ...]

For each size, colour "red" against other colours on paired shapes captions (as the Find panel's
example and the evaluation do), at `--seeds` seeds: 2 × captions × seeds images. Two paths in the
same run, each with a fresh generator (no cached base run):
- one at a time: each image's base run sampled alone, then the same ranking;
- together: `Bundle.contrast`, whose base runs go to the batched sampler at once.
Prints seconds per path, the ratio, and whether both ranked the same latents first.
"""

import time

import torch

from backend.evaluation.concepts import paired_captions
from backend.serving.bundle import Bundle
from backend.serving.contrast import image_activations, rank_latents
from bench.common import demo_parser, device_name, open_demo

TOP = 10


def one_at_a_time(bundle: Bundle, with_: list[str], without: list[str], seeds: list[int]) -> list[int]:
    """The contrast's ranking, with every base run sampled alone (the baseline)."""
    typical = bundle.typical_activation
    rows = [[image_activations(bundle.generator.base(p, s).codes, typical) for p in prompts for s in seeds] for prompts in (with_, without)]
    return [row.latent for row in rank_latents(torch.stack(rows[0]), torch.stack(rows[1]), TOP)]


def main() -> None:
    parser = demo_parser(__doc__)
    parser.add_argument("--captions", type=int, nargs="+", default=[3, 6])
    parser.add_argument("--seeds", type=int, default=2)
    args = parser.parse_args()
    bundle, model = open_demo(args)
    bundle.generator.base("a white star on a gray background", 0)  # warm-up: first-call allocations
    seeds = list(range(args.seeds))
    print(f"device: {device_name()}")
    print(f"{'images':>6} {'one at a time s':>16} {'together s':>11} {'ratio':>6} {'same top 10':>12}")
    for count in args.captions:
        with_, without = paired_captions("colour", "red", count, seed=0)
        bundle.attach_model(model)
        start = time.perf_counter()
        alone = one_at_a_time(bundle, with_, without, seeds)
        sequential = time.perf_counter() - start
        bundle.attach_model(model)
        start = time.perf_counter()
        together = [row.latent for row in bundle.contrast(with_, without, seeds, n=TOP)]
        batched = time.perf_counter() - start
        print(f"{2 * count * len(seeds):>6} {sequential:>16.1f} {batched:>11.1f} {sequential / batched:>5.2f}x {str(alone == together):>12}",
              flush=True)


if __name__ == "__main__":
    main()
