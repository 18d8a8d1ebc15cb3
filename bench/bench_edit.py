"""A concept edit's latency beside a plain steer, on the demo bundle, for generated (issue 25) and uploaded (issue 28) images.

Rows, all from step 0 with the base run cached (what a slider drag costs): a plain one-latent
steer (the baseline), an edit at a given strength (one run, per-position deltas over the
concept's latents), an A → B swap at a given strength, and an edit with the automatic strength
(every strength of the ladder run together through the batched sampler, then the smallest whose
codes read the target). Then uploads: a new rendered image each call, inverted (DDIM inversion
and the held run that reproduces it), and inverted then edited with the automatic strength; and
a slider drag on an upload already inverted. Usage:
  python bench/bench_edit.py [--bundle checkpoints/shapes-bundle] [--model checkpoints/shapes-model] [--repeats 5]
"""

import itertools
import statistics
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from backend.diffusion.sampler import image_size  # noqa: E402
from backend.diffusion.steering import Steer  # noqa: E402
from backend.serving.edits import LADDER  # noqa: E402
from backend.shapes.render import render  # noqa: E402
from bench.common import demo_parser, device_name, open_demo, time_calls  # noqa: E402

PROMPT = "a medium green circle in the center on a gray background"


def main() -> None:
    parser = demo_parser(__doc__)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--target", default="colour=red")
    parser.add_argument("--source", default="colour=green")
    args = parser.parse_args()
    bundle, _ = open_demo(args)
    target = bundle.concept(args.target)
    strengths = (5.0 + 0.01 * i for i in itertools.count())  # a new value each call, as a dragged slider gives
    bundle.generate(PROMPT, 0, [])  # the base run, cached as in the app
    side = image_size(bundle.generator.model)[1]
    uploads = (render(seed, side, split="all")[0] for seed in itertools.count(7_500_000_000))  # never seen, never cached
    dragged = next(uploads)
    bundle.edit_image(dragged)
    rows = {
        "plain steer, one latent (baseline)": lambda: bundle.generate(PROMPT, 0, [Steer(target.latents[0], next(strengths))]),
        f"edit → {args.target}, given strength": lambda: bundle.edit(PROMPT, 0, target, strength=next(strengths)),
        f"edit {args.source} → {args.target}, given strength":
            lambda: bundle.edit(PROMPT, 0, target, source=args.source, strength=next(strengths)),
        f"edit → {args.target}, automatic ({len(LADDER)} strengths together)": lambda: bundle.edit(PROMPT, 0, target),
        "upload: inversion and the run that reproduces it": lambda: bundle.generator.invert(next(uploads)),
        f"upload → {args.target}, automatic: inversion and edit": lambda: bundle.edit_image(next(uploads), target),
        f"inverted upload → {args.target}, given strength": lambda: bundle.edit_image(dragged, target, strength=next(strengths)),
    }
    times = {name: time_calls(fn, args.repeats, warmup=1) for name, fn in rows.items()}
    baseline = statistics.median(next(iter(times.values())))
    print(f"device: {device_name()}; {bundle.generator.num_steps} steps; {len(target.latents)} latents in {args.target}; "
          f"{args.repeats} repeats")
    print(f"{'what':<58} {'median ms':>10} {'vs plain steer':>15}")
    for name, measured in times.items():
        median = statistics.median(measured)
        print(f"{name:<58} {1e3 * median:>10.1f} {median / baseline:>14.2f}x")


if __name__ == "__main__":
    main()
