"""Helpers shared by the benchmarks: what machine this is, latency percentiles, and the demo bundle with its model."""

import argparse
import platform
import socket
import statistics
import time
from collections.abc import Callable

import torch


def demo_parser(description: str) -> argparse.ArgumentParser:
    """A benchmark's parser with --bundle and --model, which default to the shipped demo."""
    parser = argparse.ArgumentParser(description=description)
    parser.add_argument("--bundle", default="checkpoints/shapes-bundle")
    parser.add_argument("--model", default="checkpoints/shapes-model")
    return parser


def open_demo(args: argparse.Namespace):
    """(bundle, model) from --bundle and --model: the model loaded on the CPU and attached to the bundle.

    Imported here, not at the top: benchmarks that run without diffusers (bench_sae_train on the GPU machine) import this module too.
    """
    from backend.diffusion.models import load_model
    from backend.serving.bundle import Bundle

    bundle, model = Bundle.load(args.bundle), load_model(args.model, device="cpu")
    bundle.attach_model(model)
    return bundle, model


def device_name() -> str:
    """CPU model (and GPU, when present) with core count, for the results table."""
    cpu = platform.processor() or "unknown CPU"
    try:
        with open("/proc/cpuinfo") as f:
            cpu = next(line.split(":", 1)[1].strip() for line in f if line.startswith("model name"))
    except (OSError, StopIteration):
        pass
    name = f"{cpu}, {torch.get_num_threads()} threads"
    if torch.cuda.is_available():
        name += f", {torch.cuda.get_device_name()}"
    return name


def time_calls(fn: Callable[[], object], repeats: int, warmup: int = 2) -> list[float]:
    """Wall-clock seconds of `repeats` calls of `fn`, after `warmup` untimed calls."""
    for _ in range(warmup):
        fn()
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return times


def percentile(times: list[float], q: float) -> float:
    """The q-th percentile (0-100) of `times`."""
    return statistics.quantiles(times, n=100, method="inclusive")[int(q) - 1] if len(times) > 1 else times[0]


def free_port() -> int:
    """A localhost port nobody listens on right now."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]
