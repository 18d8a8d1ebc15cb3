"""Stream trajectories at one site to disk in safetensors shards, resumable shard by shard."""

import json
from collections.abc import Iterator, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path

import torch
from safetensors.torch import load_file
from torch import Tensor
from tqdm.auto import tqdm

from backend.diffusion.hooks import TrajectoryRecorder
from backend.diffusion.models import DiffusionModel
from backend.diffusion.sampler import sample
from backend.errors import ExplorerError
from backend.io import sha256_file, write_json, write_safetensors

MANIFEST = "collect.json"


@dataclass(frozen=True)
class CollectConfig:
    """What a collection run records; a directory holds shards of exactly one config."""

    site: str
    num_steps: int
    recorded_steps: tuple[int, ...]
    guidance_scale: float
    seed: int = 0
    images_per_shard: int = 64
    batch_size: int = 8
    positions_per_image: int | None = None  # None: every spatial position
    dtype: str = "float16"
    thumbnail_size: int = 128  # generated images are kept at most this large, for the atlas


def evenly_spaced_steps(num_steps: int, count: int) -> tuple[int, ...]:
    """`count` sampler step indices spread evenly over 0..num_steps-1, both ends included."""
    if not 1 <= count <= num_steps:
        raise ExplorerError(f"Cannot record {count} of {num_steps} steps.")
    if count == 1:
        return (num_steps - 1,)
    return tuple(round(i * (num_steps - 1) / (count - 1)) for i in range(count))


def _subsample(traj: Tensor, image_ids: Sequence[int], keep: int | None, seed: int) -> tuple[Tensor, Tensor, Tensor]:
    """Flatten Tensor[B, P, T, C] into position rows, keeping `keep` random positions per image."""
    rows, ids, positions = [], [], []
    for image_traj, image_id in zip(traj, image_ids):
        n_pos = image_traj.shape[0]
        if keep is None or keep >= n_pos:
            chosen = torch.arange(n_pos)
        else:  # seeded by image id, so a resumed or sharded run keeps the same positions
            chosen = torch.randperm(n_pos, generator=torch.Generator().manual_seed(seed * 1_000_003 + image_id))[:keep].sort().values
        rows.append(image_traj[chosen])
        ids.append(torch.full((len(chosen),), image_id, dtype=torch.long))
        positions.append(chosen)
    return torch.cat(rows), torch.cat(ids), torch.cat(positions)


def thumbnails(images: Tensor, size: int) -> Tensor:
    """Images Tensor[B, 3, H, W] in [0, 1] as uint8 Tensor[B, h, w, 3], downsized to at most `size`."""
    if max(images.shape[-2:]) > size:
        images = torch.nn.functional.interpolate(images, size=(size, size), mode="area")
    return (images * 255).round().to(torch.uint8).permute(0, 2, 3, 1).contiguous()


def _check_manifest(out_dir: Path, config: CollectConfig, prompts: Sequence[str]) -> None:
    """Create the collection manifest, or refuse a directory holding another config or prompt list."""
    path = out_dir / MANIFEST
    expected = {"config": asdict(config) | {"recorded_steps": list(config.recorded_steps)}, "n_prompts": len(prompts)}
    if path.exists():
        if json.loads(path.read_text()) != expected:
            raise ExplorerError(f"{out_dir} holds a collection with another config; use a fresh directory.")
        return
    write_json(path, expected)  # every rank writes the same bytes; the rename is atomic


def shard_info_path(shard: Path) -> Path:
    """The sidecar that marks a shard finished: its sha256, row count and site grid."""
    return shard.with_suffix(".json")


def collect_trajectories(model: DiffusionModel, prompts: Sequence[str], out_dir: str | Path, config: CollectConfig,
                         progress: bool = True, rank: int = 0, world_size: int = 1) -> list[Path]:
    """Sample every prompt, record the site at the recorded steps, and write shards.

    Each shard `shard-XXXXX.safetensors` holds `traj` [N, T, C], `image_id` [N], `position` [N]
    (flat h*W+w index) and the images as `thumbnails` [B, h, w, 3]; its sidecar `.json`, written
    last, marks it finished. Finished shards are skipped, so an interrupted run resumes where it
    stopped; under torchrun, rank r takes shards r, r + world_size, ...
    """
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    _check_manifest(out_dir, config, prompts)
    n_shards = -(-len(prompts) // config.images_per_shard)
    mine = range(rank, n_shards, world_size)
    for shard in tqdm(mine, desc=f"collect {config.site}", unit="shard", disable=not progress):
        path = out_dir / f"shard-{shard:05d}.safetensors"
        if shard_info_path(path).exists():
            continue
        start = shard * config.images_per_shard
        ids = range(start, min(start + config.images_per_shard, len(prompts)))
        parts, images = [], []
        for b in range(0, len(ids), config.batch_size):
            batch = list(ids[b : b + config.batch_size])
            recorder = TrajectoryRecorder(config.site, config.recorded_steps)
            result = sample(model, [prompts[i] for i in batch], seed=[config.seed + i for i in batch], num_steps=config.num_steps,
                            guidance_scale=config.guidance_scale, hooks=[recorder])
            parts.append(_subsample(recorder.trajectories(), batch, config.positions_per_image, config.seed))
            images.append(thumbnails(result.images, config.thumbnail_size))
        traj, image_id, position = (torch.cat(p) for p in zip(*parts))
        write_safetensors(path, {"traj": traj.to(getattr(torch, config.dtype)), "image_id": image_id,
                                 "position": position, "thumbnails": torch.cat(images)})
        write_json(shard_info_path(path), {"sha256": sha256_file(path), "rows": len(traj), "grid": list(recorder.grid)})
    return [out_dir / f"shard-{shard:05d}.safetensors" for shard in range(n_shards)]


def shard_names(out_dir: str | Path) -> list[str]:
    """Names of the finished shards, in order."""
    return sorted(p.with_suffix(".safetensors").name for p in Path(out_dir).glob("shard-*.json"))


def shard_info(out_dir: str | Path, name: str) -> dict:
    """A finished shard's sidecar: sha256, rows, grid."""
    return json.loads(shard_info_path(Path(out_dir) / name).read_text())


def read_shard(out_dir: str | Path, name: str) -> dict[str, Tensor]:
    """A finished shard's tensors, after checking its sha256 against its sidecar."""
    path = Path(out_dir) / name
    if not path.is_file() or sha256_file(path) != shard_info(out_dir, name)["sha256"]:
        raise ExplorerError(f"Shard {path} is missing or corrupt (sha256 mismatch); delete it and its .json and collect again.")
    return load_file(path)


def read_shards(out_dir: str | Path) -> Iterator[dict[str, Tensor]]:
    """Yield every finished shard's tensors, verified, in order."""
    for name in shard_names(out_dir):
        yield read_shard(out_dir, name)
