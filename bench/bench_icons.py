"""Feature icons (the build's icons stage) on the demo bundle: steered runs stepped together vs one at a time.

    python -m bench.bench_icons [--latents 8] [--bundle ...] [--model ...]

The first `--latents` live latents at the bundle's icon settings (or the build's defaults), with
a fresh generator per path so both start from an empty base-run cache:
- one at a time: `draw_icons` with one worker, every steered run sampled alone;
- together: `draw_icons` as the icons stage calls it, its runs stepped together by the batched sampler.
Prints seconds per path, seconds per icon, the ratio, and the largest pixel difference between the two.
"""

import time

from backend.serving.icon_drawing import WORKERS, draw_icons, icon_side
from backend.serving.icons import DEFAULT_STRENGTHS, IconSettings
from bench.common import demo_parser, device_name, open_demo


def main() -> None:
    parser = demo_parser(__doc__)
    parser.add_argument("--latents", type=int, default=8)
    args = parser.parse_args()
    bundle, model = open_demo(args)
    settings = bundle.icons.settings if bundle.has_icons else IconSettings("", 0, DEFAULT_STRENGTHS)
    latents = bundle.typical_activation.gt(0).nonzero().flatten()[: args.latents].tolist()
    size = icon_side(bundle)
    draw_icons(bundle.generator, settings, latents[:1], size)  # warm-up: first-call allocations
    print(f"device: {device_name()}")
    print(f"{len(latents)} latents × {len(settings.strengths)} strengths into {settings.prompt or 'the empty prompt'!r}")
    results, seconds = {}, {}
    for name, workers in (("one at a time", 1), ("together", WORKERS)):
        bundle.attach_model(model)
        start = time.perf_counter()
        results[name] = draw_icons(bundle.generator, settings, latents, size, workers=workers)
        seconds[name] = time.perf_counter() - start
        print(f"{name:>14}: {seconds[name]:6.1f} s, {seconds[name] / results[name][:, :, 0, 0, 0].numel():.2f} s per icon", flush=True)
    difference = (results["together"].int() - results["one at a time"].int()).abs().max()
    print(f"ratio {seconds['one at a time'] / seconds['together']:.2f}x; largest pixel difference {int(difference)} of 255")


if __name__ == "__main__":
    main()
