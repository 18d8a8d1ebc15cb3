"""Latency of a latent page: through the served app (gradio_client) vs the handler called in-process.

    python -m bench.bench_ui_latency [--bundle checkpoints/shapes-bundle] [--model PATH] [--latents 30]

Prints the median and p90 of each, their ratio (the cost of the queue, HTTP, image encoding and,
with images fetched, their downloads),
and the CPU it ran on. A latent page reads only the atlas; no model call is timed.
"""

import argparse
import statistics

from gradio_client import Client

from app import DEFAULT_BUNDLE
from bench.common import device_name, free_port, percentile, time_calls
from ui.app import LAUNCH, build_app
from ui.browse import latent_page
from ui.explorer import open_explorer


def timed(fn, latents: list[int]) -> list[float]:
    """Seconds per call of fn(j), one call per latent after one warm-up call."""
    calls = iter(latents * 2)
    return time_calls(lambda: fn(next(calls)), repeats=len(latents), warmup=1)


def summary(times: list[float]) -> tuple[float, float]:
    """Median and 90th percentile, in milliseconds."""
    return statistics.median(times) * 1e3, percentile(times, 90) * 1e3


def main(argv=None) -> None:
    """Serve the app, time latent pages both ways, print the table."""
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--bundle", default=DEFAULT_BUNDLE)
    parser.add_argument("--model", default=None)
    parser.add_argument("--latents", type=int, default=30, help="how many latents to fetch (the most frequent ones)")
    args = parser.parse_args(argv)

    explorer = open_explorer(args.bundle, args.model)
    latents = [int(j) for j in explorer.table.frequency.argsort()[::-1][: args.latents]]
    demo = build_app(explorer).queue(default_concurrency_limit=1)
    demo.launch(server_name="127.0.0.1", server_port=free_port(), prevent_thread_lock=True, quiet=True, **LAUNCH)
    try:
        served = {}
        for fetch in (True, False):
            client = Client(demo.local_url, verbose=False, download_files=fetch)
            served[fetch] = timed(lambda j: client.predict(j, api_name="/latent_page"), latents)
    finally:
        demo.close()
    direct = timed(lambda j: latent_page(explorer, j), latents)

    rows = {"served, images fetched": served[True], "served, images not fetched": served[False], "handler in-process": direct}
    medians = {name: summary(times) for name, times in rows.items()}
    print(f"device: {device_name()} ({len(latents)} latents of {args.bundle})")
    print(f"{'path':<30}{'median ms':>12}{'p90 ms':>12}")
    for name, (median, p90) in medians.items():
        print(f"{name:<30}{median:>12.1f}{p90:>12.1f}")
    direct_median = medians["handler in-process"][0]
    print(f"ratio served / in-process (median): {medians['served, images fetched'][0] / direct_median:.1f}x "
          f"({medians['served, images not fetched'][0] / direct_median:.1f}x without fetching the images)")

if __name__ == "__main__":
    main()
