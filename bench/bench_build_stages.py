"""Each build stage as its own process: wall time, peak RSS and disk, beside what `--plan` predicted.

    python -m bench.bench_build_stages -- --model /tmp/sd15-256 --out /tmp/sd15-bundle --prompts prompts.txt ...

Runs `python -m backend.build <args> --stages S` for each stage in order (a fresh process each, so
each peak RSS is that stage's alone, Python and torch included), then prints per stage the wall
time, the peak resident memory, the plan's peak memory for the stage's largest tensors, and the
disk written per image, with the machine it ran on. The baseline is the plan, made in the same
run before anything runs.
"""

import argparse
import os
import subprocess
import sys
import time
from pathlib import Path

from backend.build import STAGES, Build, parse_command
from backend.build_plan import GB, bytes_under
from bench.common import device_name

ROOT = Path(__file__).resolve().parents[1]


def run_stage(build_args: list[str], stage: str) -> tuple[float, float]:
    """Wall seconds and peak RSS in bytes of one stage run as its own process."""
    start = time.perf_counter()
    process = subprocess.Popen([sys.executable, "-m", "backend.build", *build_args, "--stages", stage], cwd=ROOT)
    _, status, usage = os.wait4(process.pid, 0)
    process.returncode = os.waitstatus_to_exitcode(status)
    if process.returncode:
        raise SystemExit(f"stage {stage} failed with exit code {process.returncode}")
    return time.perf_counter() - start, usage.ru_maxrss * 1024  # Linux reports kilobytes


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("build_args", nargs=argparse.REMAINDER, help="the build's options, after --")
    args = parser.parse_args(argv)
    build_args = [a for a in args.build_args if a != "--"]
    config, _ = parse_command(build_args)
    build = Build(config)
    plan = build.plan()
    print(plan.table())
    images = plan.images
    rows = []
    for stage, needs in zip(STAGES, [*plan.stages, None]):
        before = bytes_under(build.work) + bytes_under(Path(config.out))
        seconds, rss = run_stage(build_args, stage)
        written = bytes_under(build.work) + bytes_under(Path(config.out)) - before
        rows.append((stage, seconds, rss, needs.memory if needs else float("nan"), written / images))
    print(f"\ndevice: {device_name()}; {images} images")
    print(f"{'stage':<10}{'wall s':>10}{'peak RSS GB':>14}{'plan GB':>10}{'disk per image MB':>20}")
    for stage, seconds, rss, planned, per_image in rows:
        print(f"{stage:<10}{seconds:>10.1f}{rss / GB:>14.2f}{planned / GB:>10.2f}{per_image / 1e6:>20.2f}")
    print(f"{'total':<10}{sum(r[1] for r in rows):>10.1f}{max(r[2] for r in rows) / GB:>14.2f}{'':>10}"
          f"{sum(r[4] for r in rows) / 1e6:>20.2f}")


if __name__ == "__main__":
    main()
