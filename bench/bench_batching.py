"""Concurrent steering requests on the demo bundle: batched UNet calls vs one request at a time.

    python -m bench.bench_batching [--concurrency 1 4 8 20] [--requests 3] [--bundle ...] [--model ...]

At each concurrency c, c client threads each send `--requests` steer requests: a prompt and
seed of their own (the first request samples its base run, later ones reuse it, as a dragged
slider does), a random latent and strength, and a window starting at step 0 or 10. Two paths
in the same run, with the same requests:
- one at a time: a lock around each request, which is what the app did before (one model call
  at a time, queued);
- batched: requests call the generator concurrently, and its sampler steps all running requests
  together in one UNet call per step.
Prints throughput (requests/s) and latency (median, p95) per path and the throughput ratio.
"""

import random
import statistics
import threading
import time
from contextlib import nullcontext

from backend.diffusion.steering import Steer
from backend.serving.bundle import Bundle
from bench.common import demo_parser, device_name, open_demo, percentile

COLOURS, SHAPES = ("red", "green", "blue", "yellow"), ("circle", "square", "triangle", "star")


def client_requests(client: int, count: int, rng: random.Random, steps: int, live: list[int]) -> list[dict]:
    """One client's requests: its own prompt and seed, fresh latents (of those that fire), strengths and windows."""
    prompt = f"a {COLOURS[client % 4]} {SHAPES[client // 4 % 4]} in the center on a black background"
    return [dict(prompt=prompt, seed=1000 + client, steering=[Steer(rng.choice(live), rng.uniform(-4, 4))],
                 window=(rng.choice((0, 10)), steps - 1)) for _ in range(count)]


def run_clients(bundle: Bundle, requests: list[list[dict]], one_at_a_time: bool) -> tuple[float, list[float]]:
    """Wall time of all clients' requests and each request's latency."""
    gate = threading.Lock() if one_at_a_time else nullcontext()
    latencies: list[float] = []

    def client(mine: list[dict]) -> None:
        for request in mine:
            start = time.perf_counter()
            with gate:
                bundle.generate(**request)
            latencies.append(time.perf_counter() - start)

    threads = [threading.Thread(target=client, args=(mine,)) for mine in requests]
    start = time.perf_counter()
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    return time.perf_counter() - start, latencies


def main() -> None:
    parser = demo_parser(__doc__)
    parser.add_argument("--concurrency", type=int, nargs="+", default=[1, 4, 8, 20])
    parser.add_argument("--requests", type=int, default=3, help="requests per client")
    args = parser.parse_args()
    bundle, model = open_demo(args)
    bundle.generate("a white star on a gray background", 0, [Steer(0, 1.0)])  # warm-up: first-call allocations
    live = [j for j, s in enumerate(bundle.typical_activation.tolist()) if s > 0]
    print(f"device: {device_name()}")
    print(f"{'clients':>7} {'path':<14} {'req/s':>7} {'p50 s':>7} {'p95 s':>7} {'UNet rows/call':>15} {'throughput ratio':>17}")
    for c in args.concurrency:
        throughput = {}
        for path in ("one at a time", "batched"):
            bundle.attach_model(model)  # a fresh generator: no base run cached from the other path
            rng = random.Random(c)
            requests = [client_requests(i, args.requests, rng, bundle.generator.num_steps, live) for i in range(c)]
            sampler = bundle.generator.sampler
            wall, latencies = run_clients(bundle, requests, one_at_a_time=path == "one at a time")
            throughput[path] = len(latencies) / wall
            ratio = f"{throughput[path] / throughput['one at a time']:.2f}x" if path == "batched" else ""
            print(f"{c:>7} {path:<14} {throughput[path]:>7.2f} {statistics.median(latencies):>7.2f} {percentile(latencies, 95):>7.2f} "
                  f"{sampler.rows_stepped / max(sampler.calls, 1):>15.1f} {ratio:>17}", flush=True)


if __name__ == "__main__":
    main()
