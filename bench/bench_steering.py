"""Steered regeneration on the demo bundle: median latency, with and without reusing the base run's prefix.

Baselines measured in the same run: an unsteered generation (the cost of any image) and a
steered generation recomputed from step 0. Usage:
  python bench/bench_steering.py [--bundle checkpoints/shapes-bundle] [--model checkpoints/shapes-model] [--repeats 10]
"""

import statistics
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from backend.diffusion.sampler import sample  # noqa: E402
from backend.diffusion.steering import Steer  # noqa: E402
from bench.common import demo_parser, device_name, open_demo, time_calls  # noqa: E402

PROMPT = "a large red circle in the center on a black background"


def main() -> None:
    parser = demo_parser(__doc__)
    parser.add_argument("--repeats", type=int, default=10)
    args = parser.parse_args()
    bundle, model = open_demo(args)
    generator = bundle.generator
    steps = generator.num_steps
    latent = int(generator.base(PROMPT, 0).codes.sum(0).argmax())
    strengths = iter([1.0 + 0.1 * i for i in range(10**6)])  # a new value each call, as a dragged slider gives

    def steer(start: int):
        return lambda: bundle.generate(PROMPT, 0, [Steer(latent, next(strengths))], window=(start, steps - 1))

    rows = {
        "unsteered generation (baseline)": time_calls(lambda: sample(model, PROMPT, 0, num_steps=steps, guidance_scale=generator.default_guidance), args.repeats),
        "steered, recomputed from step 0": time_calls(steer(0), args.repeats),
        f"steered from step {steps // 2} (prefix reused)": time_calls(steer(steps // 2), args.repeats),
        f"steered from step {3 * steps // 4} (prefix reused)": time_calls(steer(3 * steps // 4), args.repeats),
    }
    baseline = statistics.median(rows["unsteered generation (baseline)"])
    print(f"device: {device_name()}; {steps} steps, guidance {generator.default_guidance}, {args.repeats} repeats")
    print(f"{'what':<40} {'median ms':>10} {'vs unsteered':>13}")
    for name, times in rows.items():
        median = statistics.median(times)
        print(f"{name:<40} {1e3 * median:>10.1f} {baseline / median:>12.2f}x")


if __name__ == "__main__":
    main()
