"""What a build will need, before it runs: disk and peak memory per stage, from the model's configs and the settings.

An SD 1.5 build at 512 px records 1024 positions × 1280 channels per step and image at up_ft1,
so settings that are harmless on the demo (all positions, every step, a 64-image shard) ask for
tens of GB. `python -m backend.build --plan …` prints this; a build refuses to start when a
stage cannot fit the machine's memory or the work directory's disk.
"""

import os
import shutil
from dataclasses import dataclass
from pathlib import Path

from backend.diffusion.collect import CollectConfig
from backend.errors import ExplorerError
from backend.serving.icon_drawing import WORKERS as ICON_RUNS
from backend.serving.icons import ICON_PX

GB = 1e9
HEADROOM = 0.9  # share of the available memory and free disk a build may plan to use
FP16, FP32, FP64 = 2, 4, 8
# Python, torch and diffusers themselves: a stage's peak RSS less its tensors, measured on the SD 1.5 rehearsal's
# dynamics stage (docs/BENCHMARKS.md); with it the plan came within 12 % of every stage's measured peak RSS there
PROCESS = 1.3 * GB
ICON_SIDE = min(CollectConfig.thumbnail_size, ICON_PX)  # at most: smaller images stay as they are
# effective FLOP/s of the collect stage's UNet calls, and where each figure comes from (docs/BENCHMARKS.md)
COLLECT_RATES = (
    ("this project's 2-core AMD EPYC, fp32 (measured)", 1.4e11),
    ("an A100, fp16 (fal.ai's SD 1.5 figure, 31.2 it/s at 512 px)", 5.0e13),
)


@dataclass(frozen=True)
class SiteShape:
    """A UNet site's output: the spatial grid and the channels per position."""

    grid: tuple[int, int]
    channels: int

    @property
    def positions(self) -> int:
        return self.grid[0] * self.grid[1]


def site_shape(unet_config: dict, site: str, latent_side: int | None = None) -> SiteShape:
    """The site's grid and channels for latents `latent_side` wide (default: the UNet's sample size).

    Every down block but the last halves the grid; every up block but the last doubles it at its end.
    """
    blocks = list(unet_config["block_out_channels"])
    side = int(latent_side or unet_config["sample_size"])
    n = len(blocks)
    if site == "bottleneck":
        return SiteShape((side >> (n - 1),) * 2, blocks[-1])
    i = int(site.removeprefix("up_ft"))
    grid = side >> max(n - 2 - i, 0)
    return SiteShape((grid, grid), blocks[::-1][i])


@dataclass(frozen=True)
class StageNeeds:
    name: str
    memory: float  # peak resident bytes: the process itself and the stage's largest tensors
    disk: float  # bytes the stage writes
    holds: str  # what dominates its memory, and the option that shrinks it


@dataclass(frozen=True)
class BuildPlan:
    """Sizes of one build: what it records and what each stage needs."""

    images: int
    atlas_images: int
    site: SiteShape
    steps: int  # recorded steps T
    train_positions: int  # per image
    d_in: int  # SAE input width: T × C
    n_latents: int
    stages: tuple[StageNeeds, ...]
    collect_flops: float  # the UNet calls of every image's sampling run
    icon_flops: float  # the UNet calls of every feature icon's steered run

    @property
    def disk(self) -> float:
        return sum(stage.disk for stage in self.stages)

    def table(self) -> str:
        """The plan as text: what is recorded, then a row per stage."""
        lines = [
            f"records {self.images} images × {self.steps} steps × {self.train_positions} positions × {self.site.channels} channels "
            f"({self.site.grid[0]}×{self.site.grid[1]} grid); SAE {self.d_in} → {self.n_latents} latents",
            f"{'stage':<10}{'peak memory':>14}{'disk':>12}  dominated by",
        ]
        for stage in self.stages:
            lines.append(f"{stage.name:<10}{stage.memory / GB:>11.2f} GB{stage.disk / GB:>9.2f} GB  {stage.holds}")
        lines.append(f"{'total':<10}{'':>14}{self.disk / GB:>9.2f} GB")
        for stage, flops in (("collect", self.collect_flops), ("icons", self.icon_flops)):
            lines.append(f"rough {stage} time ({flops / 1e15:.1f} PFLOP of UNet calls; divide by the GPUs under torchrun):")
            lines += [f"  {duration(flops / rate):>9} on {where}" for where, rate in COLLECT_RATES]
        lines.append("  dynamics, train, atlas and index are not projected: 0.2-0.5x collect's time in the CPU rehearsal (docs/BENCHMARKS.md)")
        return "\n".join(lines)

    def check_fits(self, memory_available: float, disk_free: float, disk_used: float = 0.0) -> None:
        """Refuse, in one message, settings whose stages cannot fit `memory_available` or whose outputs overflow the disk.

        `disk_used` is what an interrupted build already wrote (a resumed build needs only the rest).
        """
        for stage in self.stages:
            if stage.memory > HEADROOM * memory_available:
                raise ExplorerError(
                    f"The {stage.name} stage needs about {stage.memory / GB:.1f} GB of memory and this machine has "
                    f"{memory_available / GB:.1f} GB available: {stage.holds}. Change that setting "
                    "(`python -m backend.build --plan …` shows the sizes before anything runs).")
        needed = self.disk - disk_used
        if needed > HEADROOM * disk_free:
            raise ExplorerError(
                f"This build writes about {self.disk / GB:.1f} GB ({needed / GB:.1f} GB still to write) and the work "
                f"directory's disk has {disk_free / GB:.1f} GB free. Record fewer positions (--positions-per-image), "
                "steps (--recorded-steps) or prompts, or pass a --work-dir on a larger disk.")


def duration(seconds: float) -> str:
    """'42 s', '12 min' or '3.5 h'."""
    return f"{seconds:.0f} s" if seconds < 120 else f"{seconds / 60:.0f} min" if seconds < 7200 else f"{seconds / 3600:.1f} h"


def plan_build(config, unet_config: dict, weight_bytes: float, n_prompts: int, step_flops: float) -> BuildPlan:
    """The sizes of `config`'s build (a BuildConfig) with a UNet of `unet_config`, models of `weight_bytes` in all,
    and `step_flops` per image and sampler step.

    Disk is the files each stage writes (the index stage's at most: small indexes are rebuilt at load).
    """
    site = site_shape(unet_config, config.site)
    steps = config.recorded_steps or config.num_steps
    atlas_images = min(config.atlas_images or n_prompts, n_prompts)
    train_positions = min(config.positions_per_image or site.positions, site.positions)
    per_position = steps * site.channels  # values recorded per position and image
    shard = config.images_per_shard
    d_in = site.channels if config.variant == "per_step" else per_position
    sae_bytes = 2 * d_in * config.n_latents * FP32  # encoder and decoder
    collect_disk = n_prompts * train_positions * per_position * FP16
    if config.positions_per_image:
        collect_disk += atlas_images * site.positions * per_position * FP16
    shard_values = shard * train_positions * per_position
    atlas_shard_values = shard * site.positions * per_position
    trajectory_vectors = config.n_latents * per_position * FP32  # each latent's feature trajectory, for similar latents
    icons = config.n_latents * len(config.icon_settings().strengths)
    icon_bytes = icons * ICON_SIDE**2 * 3  # uint8 RGB: rank 0 holds them all while it writes the file
    stages = (
        StageNeeds("collect", PROCESS + weight_bytes + shard_values * FP16, collect_disk,
                   "the models' weights and one shard of trajectories (--images-per-shard)"),
        StageNeeds("dynamics", PROCESS + shard_values * (FP16 + FP32) + 4 * steps * site.channels ** 2 * FP64,
                   3 * (steps - 1) * site.channels ** 2 * FP32,  # the fit's sums (work) and its maps (bundle)
                   "one shard as float32 (--images-per-shard) and the per-step C × C sums"),
        StageNeeds("train", PROCESS + 3 * shard_values * FP32 + 4 * sae_bytes,
                   3 * sae_bytes + sae_bytes / 2,  # the resumable checkpoint with Adam's moments, and the bundle's fp16 SAE
                   "one shard's SAE rows (--images-per-shard) and the SAE with its gradients and Adam state (--n-latents)"),
        StageNeeds("atlas", PROCESS + atlas_shard_values * (FP16 + FP32) + shard * site.positions * config.n_latents * FP32
                   + atlas_images * config.n_latents * FP32 + config.n_latents * config.top_n * site.positions * FP32
                   + 1.5 * sae_bytes, atlas_images * config.n_latents * FP32 + config.n_latents * config.top_n * site.positions * FP16,
                   "one shard's codes over every latent (--images-per-shard × positions × --n-latents)"),
        StageNeeds("index", PROCESS + 1.5 * sae_bytes + 4 * trajectory_vectors, trajectory_vectors,
                   "the latents' feature trajectories and their search index (--n-latents × recorded steps × channels)"),
        StageNeeds("icons", PROCESS + weight_bytes + 1.5 * sae_bytes + 2 * trajectory_vectors + ICON_RUNS * site.positions * per_position * FP32
                   + 2 * icon_bytes, icon_bytes,  # the chunks, then the icons file
                   f"the models' weights, the feature trajectories, {ICON_RUNS} steered runs' edits and every icon (--n-latents × --icon-strengths)"),
    )
    return BuildPlan(images=n_prompts, atlas_images=atlas_images, site=site, steps=steps, train_positions=train_positions,
                     d_in=d_in, n_latents=config.n_latents, stages=stages,
                     collect_flops=n_prompts * config.num_steps * step_flops, icon_flops=icons * config.num_steps * step_flops)


def memory_available() -> float:
    """Bytes of memory the machine can give a new build now (MemAvailable; total memory where /proc is missing)."""
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemAvailable:"):
                return int(line.split()[1]) * 1024
    except OSError:
        pass
    try:
        return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    except (AttributeError, ValueError, OSError):
        return float("inf")  # unknown: nothing to refuse on


def disk_free(folder: Path) -> float:
    """Free bytes on the disk that holds `folder` (or its nearest existing parent)."""
    folder = Path(folder).absolute()
    while not folder.exists():
        folder = folder.parent
    return shutil.disk_usage(folder).free


def bytes_under(folder: Path) -> float:
    """Bytes of the files under `folder` (0 when it does not exist); a file that goes away while it is listed counts 0."""
    total = 0.0
    for path in Path(folder).rglob("*"):
        try:
            total += path.stat().st_size if path.is_file() else 0
        except FileNotFoundError:  # another rank's atomic write renamed its temporary file meanwhile
            pass
    return total
