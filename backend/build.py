"""`python -m backend.build`: from prompts to a served bundle (collect, dynamics, train, atlas, index, icons).

Every stage writes to a work directory beside the bundle and skips what is already done,
so an interrupted build resumes where it stopped.
"""

import dataclasses
import hashlib
import itertools
import json
import logging
import os
import shutil
import time
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.distributed as dist
from safetensors.torch import load_file
from tqdm.auto import tqdm

from backend.cli import config_parser, option
from backend.diffusion.collect import (
    CollectConfig,
    collect_trajectories,
    evenly_spaced_steps,
    read_shard,
    read_shards,
    shard_info,
    shard_names,
)
from backend.diffusion.hooks import SITE_MODULES
from backend.build_plan import BuildPlan, bytes_under, disk_free, memory_available, plan_build
from backend.diffusion.models import DiffusionModel, default_dtype, load_model, model_sizes, unet_step_flops, weight_digests
from backend.diffusion.sampler import check_prompts
from backend.errors import ExplorerError
from backend.io import atomic_path, write_json, write_safetensors
from backend.method.dynamics import DynamicsAccumulator, LinearDynamics
from backend.method.encodings import DENSE_VARIANTS, VARIANTS, TrajectoryEncoding
from backend.method.dense_part import fit_dense_basis, fold, project_out
from backend.method.global_local import GlobalLocalSAE
from backend.method.sae_train import SAETrainConfig, distributed, fraction_of_variance_unexplained, tensor_batches, train_sae
from backend.serving.atlas import AtlasAccumulator, label_latents
from backend.serving.bundle import MAP_FILE, Bundle, rewrite_manifest
from backend.serving.icon_drawing import base_icon, draw_icons, icon_side
from backend.serving.icons import DEFAULT_STRENGTHS, ICON_FILE, IconSettings
from backend.serving.latent_map import latent_map
from backend.serving.search import EXACT_LIMIT, VectorIndex, exact_search, recall_at_k

log = logging.getLogger(__name__)

def portable_path(source: str) -> str:
    """A local path as a path relative to the working directory (a hub id or a relative path stays as it is)."""
    return os.path.relpath(source) if os.path.isabs(source) else source


def check_writable(folder: Path, flag: str) -> None:
    """Create `folder` and write a probe file in it, or say in one line why the build cannot use it.

    The probe's name is this process's own: under torchrun every rank probes the same folder at once.
    """
    probe_path = folder / f".write-probe-{os.getpid()}"
    try:
        folder.mkdir(parents=True, exist_ok=True)
        with atomic_path(probe_path) as probe:
            probe.write_bytes(b"")
        probe_path.unlink()
    except OSError as err:
        raise ExplorerError(f"{flag} {folder} cannot be written: {err.strerror or err}. Pass a folder you can write to.") from None


STAGES = ("collect", "dynamics", "train", "atlas", "index", "icons")
PARALLEL_STAGES = ("collect", "dynamics", "train", "icons")  # the others are quick and run on rank 0 alone
ICON_CHUNK = 16  # latents per resumable piece of the icons stage (48 runs at 3 strengths: the batched sampler stays full)


@dataclass
class BuildConfig:
    """Everything a build needs; each field is a command-line option of the same name."""

    model: str = option("", "model directory (SD 1.5 layout) or hub repo id")
    out: str = option("", "bundle directory to write")
    prompts: str = option("", "text file with one prompt per line")
    shapes_prompts: int = option(0, "instead of --prompts: this many captions from the shapes world")
    work_dir: str = option("", "directory for trajectories and resume state (default: <out>.work)")
    site: str = option("up_ft1", "UNet site: bottleneck, up_ft0 .. up_ft3")
    num_steps: int = option(20, "DDIM steps per image")
    recorded_steps: int = option(0, "how many of the steps to record, evenly spaced (0: every step)")
    guidance_scale: float = option(4.0, "classifier-free guidance scale")
    seed: int = option(0, "image i uses seed + i (and, in the shapes world, caption seed + i)")
    positions_per_image: int = option(0, "spatial positions per image kept for training (0: all)")
    atlas_images: int = option(0, "images in the atlas, the first ones of the prompt list (0: all)")
    images_per_shard: int = option(64, "images per trajectory shard")
    batch_size: int = option(8, "images per sampler batch")
    variant: str = option("residualized", f"SAE input: {', '.join(VARIANTS)}")
    ridge: float = option(-1.0, "ridge strength of the dynamics (negative: chosen on held-out positions)")
    n_latents: int = option(1024, "SAE latents")
    k: int = option(32, "active latents per position")
    dense_directions: int = option(0, "residualized and concat variants: the rows' top principal directions, taken out of the SAE's input and "
                                      "reconstructed exactly beside it (backend/method/dense_part.py; 0: none)")
    global_latents: int = option(64, "global_local variant: latents of the image-level SAE")
    global_k: int = option(4, "global_local variant: active image-level latents per image")
    global_steps: int = option(2000, "global_local variant: training steps of the image-level SAE (it has one row per image)")
    epochs: int = option(2, "passes over the trajectories")
    sae_batch_size: int = option(1024, "rows per SAE step")
    lr: float = option(0.0, "SAE peak learning rate (0: scaled from the number of latents and the row width)")
    sae_seed: int = option(0, "seed of the SAE's initialization and data order")
    top_n: int = option(16, "top images and patches kept per latent")
    icon_prompt: str = option("", "feature icons: the neutral prompt every latent is steered into (empty: the unconditional image)")
    icon_seed: int = option(0, "feature icons: the seed of the neutral image")
    icon_strengths: str = option(",".join(f"{a:g}" for a in DEFAULT_STRENGTHS),
                                 "feature icons: add strengths, comma-separated (units of the latent's typical activation)")
    device: str = option("", "cpu or cuda (default: cuda when available)")
    stages: str = option(",".join(STAGES), "comma-separated stages to run")

    def portable_record(self) -> dict:
        """The settings as a bundle records them: no local output paths or device, input paths relative to here."""
        left_out = ("out", "work_dir", "device", "stages", "icon_prompt", "icon_seed", "icon_strengths")  # icons: the manifest's own entry
        record = {k: v for k, v in dataclasses.asdict(self).items() if k not in left_out}
        return record | {"model": portable_path(self.model), "prompts": Path(self.prompts).name if self.prompts else ""}

    @property
    def work(self) -> Path:
        return Path(self.work_dir or f"{self.out.rstrip('/')}.work")

    def icon_settings(self) -> IconSettings:
        return IconSettings.parse(self.icon_prompt, self.icon_seed, self.icon_strengths)

    def collect_config(self, positions: int | None) -> CollectConfig:
        recorded = evenly_spaced_steps(self.num_steps, self.recorded_steps or self.num_steps)
        return CollectConfig(site=self.site, num_steps=self.num_steps, recorded_steps=recorded, guidance_scale=self.guidance_scale,
                             seed=self.seed, images_per_shard=self.images_per_shard, batch_size=self.batch_size,
                             positions_per_image=positions)


def parse_config(argv=None) -> BuildConfig:
    """BuildConfig from the command line; --help lists every field with its help text."""
    return parse_command(argv)[0]


def parse_command(argv=None) -> tuple[BuildConfig, bool]:
    """BuildConfig from the command line, and whether --plan asks for the build's needs only."""
    parser = config_parser(BuildConfig, "python -m backend.build", __doc__, {"variant": VARIANTS, "site": tuple(SITE_MODULES)})
    parser.add_argument("--plan", action="store_true", help="print each stage's disk and peak memory for these settings, then exit")
    args = vars(parser.parse_args(argv))
    plan = args.pop("plan")
    config = BuildConfig(**args)
    if not config.model or not config.out:
        parser.error("--model and --out are required")
    if config.recorded_steps == 1 or not 0 <= config.recorded_steps <= config.num_steps:
        parser.error("--recorded-steps must be 0 (all) or between 2 and --num-steps: the dynamics need two steps")
    if config.variant == "global_local" and config.positions_per_image:
        parser.error("--variant global_local needs every position of an image (its spatial mean): leave --positions-per-image at 0")
    if config.dense_directions and config.variant not in DENSE_VARIANTS:
        parser.error(f"--dense-directions applies to the {' and '.join(DENSE_VARIANTS)} variants only")
    if config.dense_directions < 0:
        parser.error("--dense-directions must be 0 (none) or more")
    if not 0 < config.global_k <= config.global_latents:
        parser.error("--global-k must be between 1 and --global-latents")
    try:
        config.icon_settings()
    except ExplorerError as err:
        parser.error(str(err))
    return config, plan


def load_prompts(config: BuildConfig) -> tuple[list[str], list[dict[str, str]]]:
    """Prompts and, for the shapes world, the factors each prompt names."""
    if config.shapes_prompts:
        from backend.shapes.captions import parse_caption
        from backend.shapes.dataset import make_example

        prompts = [make_example(config.seed + i)[1] for i in range(config.shapes_prompts)]
        return prompts, [parse_caption(p) for p in prompts]
    if not config.prompts:
        raise ExplorerError("Pass --prompts FILE or --shapes-prompts N.")
    try:
        lines = [line.strip() for line in Path(config.prompts).read_text().splitlines()]
    except OSError as err:
        raise ExplorerError(f"Cannot read the prompts file {config.prompts!r}: {err.strerror}.") from err
    prompts = [line for line in lines if line]
    if not prompts:
        raise ExplorerError(f"The prompts file {config.prompts!r} has no prompts.")
    return prompts, []


class Build:
    """The stages of one build, sharing the config, the model and the work directory."""

    def __init__(self, config: BuildConfig, model: DiffusionModel | None = None):
        self.config = config
        self.prompts, self.factors = load_prompts(config)
        self.model = model
        self.work = config.work
        self.summary: dict = {}

    def get_model(self) -> DiffusionModel:
        if self.model is None:
            self.model = load_model(self.config.model, device=self.device)
        return self.model

    @property
    def device(self) -> torch.device:
        if self.config.device:
            return torch.device(self.config.device)
        if torch.cuda.is_available():  # under torchrun each rank takes its own GPU
            return torch.device("cuda", int(os.environ.get("LOCAL_RANK", 0)))
        return torch.device("cpu")

    @property
    def rank(self) -> int:
        return dist.get_rank() if distributed() else 0

    @property
    def world_size(self) -> int:
        return dist.get_world_size() if distributed() else 1

    def barrier(self) -> None:
        if distributed():
            dist.barrier()

    @property
    def train_dir(self) -> Path:
        return self.work / "collect"

    @property
    def atlas_dir(self) -> Path:
        """Full-position trajectories of the atlas images: the training shards unless those are subsampled."""
        return self.work / "atlas-collect" if self.config.positions_per_image else self.train_dir

    @property
    def n_atlas(self) -> int:
        return min(self.config.atlas_images or len(self.prompts), len(self.prompts))

    def check_stage(self, stage: str, settings: dict) -> None:
        """Refuse to resume a stage whose saved outputs were made with other settings."""
        path = self.work / f"{stage}.settings.json"
        if path.exists() and json.loads(path.read_text()) != settings:
            raise ExplorerError(f"{self.work} holds a {stage} stage made with other settings ({path.name}); "
                                "pass a new --work-dir or delete that stage's outputs.")
        if self.rank == 0:
            write_json(path, settings)

    def collect(self) -> None:
        cfg = self.config
        prompts_sha = hashlib.sha256("\n".join(self.prompts).encode()).hexdigest()
        self.check_stage("collect", {"model": cfg.model, "prompts_sha256": prompts_sha, "positions_per_image": cfg.positions_per_image})
        shard = {"rank": self.rank, "world_size": self.world_size}
        collect_trajectories(self.get_model(), self.prompts, self.train_dir, cfg.collect_config(cfg.positions_per_image or None), **shard)
        if self.atlas_dir != self.train_dir:
            collect_trajectories(self.get_model(), self.prompts[: self.n_atlas], self.atlas_dir, cfg.collect_config(None), **shard)
        self.barrier()

    def plan(self) -> BuildPlan:
        """Disk and peak memory of each stage for these settings, from the model's configs (no weights loaded)."""
        unet_config, weight_bytes = model_sizes(self.model or self.config.model, default_dtype(self.device))
        rows = 2 if self.config.guidance_scale > 1 else 1  # guidance runs the UNet on a conditional and an unconditional row
        return plan_build(self.config, unet_config, weight_bytes, len(self.prompts), unet_step_flops(unet_config, rows))

    def check_fits(self) -> None:
        """Refuse settings whose stages cannot fit this machine's memory or the work directory's disk, before any work."""
        written = bytes_under(self.train_dir) + (bytes_under(self.atlas_dir) if self.atlas_dir != self.train_dir else 0)
        self.plan().check_fits(memory_available(), disk_free(self.work), disk_used=written)

    def dynamics(self) -> LinearDynamics:
        path = self.work / "dynamics.safetensors"
        self.check_stage("dynamics", {"ridge": self.config.ridge})
        if not shard_names(self.train_dir):
            raise ExplorerError(f"No trajectory shards in {self.train_dir}; run the collect stage first.")
        if not path.exists() and self.rank == 0:
            acc = None
            for shard in read_shards(self.train_dir):
                traj = shard["traj"].float()
                acc = acc or DynamicsAccumulator(traj.shape[1], traj.shape[2])
                acc.update(traj)
            dyn = acc.finish(None if self.config.ridge < 0 else self.config.ridge)
            write_safetensors(path, dyn.state_dict())
        self.barrier()
        dyn = LinearDynamics.from_state_dict(load_file(path))
        self.summary["r2_per_step"] = [round(float(r), 4) for r in dyn.r2]
        return dyn

    def encoding(self) -> TrajectoryEncoding:
        grid = shard_info(self.train_dir, shard_names(self.train_dir)[0])["grid"]
        return TrajectoryEncoding(self.config.variant, self.dynamics(), grid[0] * grid[1])

    def train(self) -> None:
        cfg, encoding = self.config, self.encoding()
        train_config = SAETrainConfig(n_latents=cfg.n_latents, k=cfg.k, lr=cfg.lr or None, epochs=cfg.epochs, seed=cfg.sae_seed)
        global_settings = ("global_latents", "global_k", "global_steps") if cfg.variant == "global_local" else ()
        dense_settings = ("dense_directions",) if cfg.dense_directions else ()
        if cfg.dense_directions >= encoding.d_in():
            raise ExplorerError(f"--dense-directions {cfg.dense_directions} must be below the SAE input's width, {encoding.d_in()}.")
        local_width = encoding.d_in() // encoding.parts  # global_local: the per-position SAE reads the deviations only
        self.check_stage("train", {k: getattr(cfg, k) for k in ("variant", "n_latents", "k", "sae_batch_size", "sae_seed",
                                                                 *global_settings, *dense_settings)}
                         | {"lr": train_config.learning_rate(local_width), "decay_share": train_config.decay_share})
        names = shard_names(self.train_dir)
        dense = self.dense_basis(encoding, names)

        def local(rows: torch.Tensor) -> torch.Tensor:
            """What the per-position SAE trains on, from encoded rows."""
            rows = rows[:, :local_width]
            return project_out(rows, *dense) if dense else rows
        batches_in = [-(-shard_info(self.train_dir, name)["rows"] // cfg.sae_batch_size) for name in names]

        def shard_order(epoch: int) -> list[int]:
            return torch.randperm(len(names), generator=torch.Generator().manual_seed(cfg.sae_seed * 7919 + epoch)).tolist()

        def steps_in(epoch: int) -> int:
            """Every rank takes the same number of steps: as many as the rank with the fewest rows has batches."""
            order = shard_order(epoch)
            return min(sum(batches_in[i] for i in order[r :: self.world_size]) for r in range(self.world_size))

        def batches(epoch: int):
            """This rank's share of the shards, in an epoch-seeded order."""
            order, steps = shard_order(epoch), steps_in(epoch)
            generator = torch.Generator().manual_seed(cfg.sae_seed * 7919 + epoch * 104729 + self.rank)

            def rows():
                for i in order[self.rank :: self.world_size]:
                    shard_rows = local(encoding.to_rows(read_shard(self.train_dir, names[i])["traj"].float()))
                    yield from shard_rows[torch.randperm(len(shard_rows), generator=generator)].split(cfg.sae_batch_size)

            return itertools.islice(rows(), steps)

        traj = read_shard(self.train_dir, names[0])["traj"].float()  # also the sample the summary's FVU is measured on
        rows = encoding.to_rows(traj)
        sae, history = train_sae(batches, local_width, train_config, local(rows[:4096]), checkpoint=self.work / "sae-train.safetensors",
                                 device=self.device, progress=self.rank == 0, total_steps=sum(map(steps_in, range(cfg.epochs))))
        if dense:
            sae = fold(sae, *dense)
        if cfg.variant == "global_local":
            sae = GlobalLocalSAE(sae, self.train_global(encoding, names))
        if self.rank != 0:
            self.barrier()
            return
        with torch.no_grad():
            recon, _ = sae.reconstruct(rows)
            fvu = fraction_of_variance_unexplained(encoding.combined(rows), encoding.combined(recon))  # global_local: parts summed
            self.summary["fvu_sae_input"] = round(float(fvu), 4)
            for name, traj_hat in (("rollout", encoding.from_rows(recon)), ("one_step", encoding.one_step_reconstruction(recon, traj))):
                self.summary[f"fvu_activation_{name}_per_step"] = [
                    round(float(fraction_of_variance_unexplained(traj[:, t], traj_hat[:, t])), 4) for t in range(traj.shape[1])
                ]
        Bundle.save(
            cfg.out, sae=sae, dynamics=encoding.dynamics, variant=cfg.variant, site=cfg.site,
            model={"source": portable_path(cfg.model), "files": weight_digests(cfg.model)},
            grid=tuple(shard_info(self.train_dir, names[0])["grid"]),
            schedule={"num_steps": cfg.num_steps, "recorded_steps": list(cfg.collect_config(None).recorded_steps),
                      "guidance_scale": cfg.guidance_scale},
            extra={"build": cfg.portable_record() | {"final_fvu": history[-1]["fvu"] if history else None}},
        )
        self.barrier()

    def dense_basis(self, encoding: TrajectoryEncoding, names: list[str], sample_rows: int = 16384) -> tuple[torch.Tensor, torch.Tensor] | None:
        """(basis, center) of the dense directions (`--dense-directions`), fitted by rank 0 on up to `sample_rows` rows
        drawn evenly from every shard and kept in the work directory, so every rank and a resumed build use the same."""
        if not self.config.dense_directions:
            return None
        path = self.work / "dense-basis.safetensors"
        if not path.exists() and self.rank == 0:
            per_shard = -(-sample_rows // len(names))
            generator = torch.Generator().manual_seed(self.config.sae_seed)
            sample = []
            for name in tqdm(names, desc="dense directions", unit="shard"):
                rows = encoding.to_rows(read_shard(self.train_dir, name)["traj"].float())
                sample.append(rows[torch.randperm(len(rows), generator=generator)[:per_shard]])
            try:
                basis, center = fit_dense_basis(torch.cat(sample), self.config.dense_directions, self.config.sae_seed)
            except ValueError as err:
                raise ExplorerError(f"--dense-directions {self.config.dense_directions}: {err}") from None
            write_safetensors(path, {"basis": basis, "center": center})
        self.barrier()
        state = load_file(path)
        return state["basis"], state["center"]

    def train_global(self, encoding: TrajectoryEncoding, names: list[str]):
        """The image-level SAE of the global_local variant, on every image's mean row.

        There is one row per image, so every rank reads all of them (identical batches keep the
        ranks' averaged gradients those of one process) and the SAE takes `global_steps` steps.
        """
        cfg, width = self.config, encoding.d_in() // 2
        means = []
        for name in names:
            shard = read_shard(self.train_dir, name)
            ids = shard["image_id"]
            if not torch.equal(ids, ids[:: encoding.positions].repeat_interleave(encoding.positions)):
                raise ExplorerError(f"Shard {name} does not hold whole images position after position; recollect it.")
            means.append(encoding.to_rows(shard["traj"].float())[:: encoding.positions, width:])
        means = torch.cat(means)
        batch = min(256, len(means))
        epochs = -(-cfg.global_steps // -(-len(means) // batch))
        config = SAETrainConfig(n_latents=cfg.global_latents, k=cfg.global_k, epochs=epochs, seed=cfg.sae_seed)
        sae, _ = train_sae(tensor_batches(means, batch, cfg.sae_seed), width, config, means[:4096],
                           device=self.device, progress=self.rank == 0,  # seconds of work: no resume checkpoint
                           total_steps=epochs * -(-len(means) // batch))
        return sae

    def atlas(self) -> None:
        bundle = Bundle.load(self.config.out)
        grid = bundle.manifest["shapes"]["grid"]
        positions = grid[0] * grid[1]
        acc = AtlasAccumulator(bundle.n_latents, self.n_atlas, positions, self.config.top_n)
        state_path = self.work / f"atlas-state-{bundle.manifest['files']['sae/sae.safetensors'][:16]}.safetensors"  # per SAE
        done = 0
        if state_path.exists():
            saved = load_file(state_path)
            done = int(saved.pop("shards_done"))
            acc.state = saved
        thumbs = {}
        for index, shard in enumerate(read_shards(self.atlas_dir)):
            ids = shard["image_id"].unique_consecutive()
            thumbs.update({int(i): t for i, t in zip(ids, shard["thumbnails"]) if i < self.n_atlas})
            if index < done:
                continue
            keep = shard["image_id"] < self.n_atlas
            if not keep.any():
                continue
            traj = shard["traj"][keep].float()
            codes = bundle.codes(traj).reshape(-1, positions, bundle.n_latents)
            acc.update(shard["image_id"][keep].reshape(-1, positions)[:, 0], codes)
            write_safetensors(state_path, acc.state | {"shards_done": torch.tensor(index + 1)})
        if not bool(acc.state["images_done"].all()):
            raise ExplorerError("Some atlas images have no trajectories; run the collect stage first.")
        tables = acc.finish()
        tables["top_image_map"] = tables["top_image_map"].half()
        tables["image_profile"] = tables["image_profile"].half()
        root = Path(self.config.out)
        write_safetensors(root / "atlas" / "tables.safetensors", tables)
        write_safetensors(root / "atlas" / "thumbnails.safetensors", {"thumbnails": torch.stack([thumbs[i] for i in range(self.n_atlas)])})
        images = [{"prompt": p, "seed": self.config.seed + i} | ({"factors": self.factors[i]} if self.factors else {})
                  for i, p in enumerate(self.prompts[: self.n_atlas])]
        write_json(root / "atlas" / "images.json", images)
        labels = label_latents(tables["top_image_id"], tables["top_image_score"], self.factors[: self.n_atlas]) if self.factors else [{}] * bundle.n_latents
        write_json(root / "atlas" / "latents.json", labels)
        rewrite_manifest(root)
        state_path.unlink()
        self.summary["dead_latents"] = int((tables["frequency"] == 0).sum())
        self.summary["labelled_latents"] = sum(1 for label in labels if label.get("factor"))

    def index(self) -> None:
        bundle = Bundle.load(self.config.out)
        root = Path(self.config.out)
        vectors = {"images": bundle.atlas["image_profile"].float().numpy(), "latents": bundle.trajectory_vectors.numpy()}
        for name, rows in vectors.items():
            index = VectorIndex.build(rows)
            queries = rows[torch.randperm(len(rows), generator=torch.Generator().manual_seed(0))[:200].numpy()]
            recall = recall_at_k(index.search(queries, 10)[1], exact_search(rows, queries, 10))
            self.summary[f"recall@10_{name}"] = round(recall, 4)
            if len(rows) > EXACT_LIMIT:  # flat indexes are rebuilt at load; only approximate ones are stored
                (root / "index").mkdir(exist_ok=True)
                index.save(root / "index" / f"{name}.faiss")
        write_safetensors(root / MAP_FILE, {"xy": torch.from_numpy(latent_map(vectors["latents"], seed=self.config.sae_seed))})
        rewrite_manifest(root)

    def icons(self) -> None:
        """Every live latent steered into the neutral prompt at each strength (icons.py).

        The latents go in chunks, shared round-robin by the ranks; each chunk is its own file in
        the work directory, so an interrupted stage resumes at the first chunk not yet written.
        """
        self.barrier()  # the index stage (rank 0 alone) rewrites the manifest before any rank loads the bundle
        settings, root = self.config.icon_settings(), Path(self.config.out)
        bundle = Bundle.load(root)
        bundle.attach_model(self.get_model())
        size = icon_side(bundle)
        live = bundle.typical_activation.gt(0).nonzero().flatten().tolist()
        chunks = [live[i : i + ICON_CHUNK] for i in range(0, len(live), ICON_CHUNK)]
        files = bundle.manifest["files"]
        key = json.dumps([files["sae/sae.safetensors"], files["atlas/tables.safetensors"], bundle.manifest["model"].get("files", {}),
                          dataclasses.asdict(settings), size])
        chunk_dir = self.work / f"icons-{hashlib.sha256(key.encode()).hexdigest()[:16]}"
        mine = range(self.rank, len(chunks), self.world_size)
        with tqdm(total=sum(len(chunks[i]) for i in mine), desc="icons", unit="latent", disable=self.rank != 0) as progress:
            for i in mine:
                path = chunk_dir / f"{i:05d}.safetensors"
                if not path.exists():
                    pictures = draw_icons(bundle.generator, settings, chunks[i], size)
                    write_safetensors(path, {"icons": pictures, "latents": torch.tensor(chunks[i])})
                progress.update(len(chunks[i]))
        self.barrier()
        if self.rank != 0:
            return
        images = torch.zeros(bundle.n_latents, len(settings.strengths), size, size, 3, dtype=torch.uint8)
        for i, chunk in enumerate(chunks):
            piece = load_file(chunk_dir / f"{i:05d}.safetensors")
            if piece["latents"].tolist() != chunk:  # written with another chunk size: the key does not tell those apart
                raise ExplorerError(f"{chunk_dir} holds icons of other latents; delete it and rerun the icons stage.")
            images[chunk] = piece["icons"]
        drawn = torch.zeros(bundle.n_latents, dtype=torch.bool)
        drawn[live] = True
        write_safetensors(root / ICON_FILE, {"icons": images, "base": base_icon(bundle.generator, settings, size), "drawn": drawn})
        rewrite_manifest(root, icons=settings.record(files["atlas/tables.safetensors"]))
        shutil.rmtree(chunk_dir, ignore_errors=True)  # no chunks when every latent is dead
        self.summary["icons"] = len(live) * len(settings.strengths)

    def check_icon_prompt(self) -> None:
        """Refuse an icon prompt longer than the model reads before any stage runs, not hours later at the icons stage."""
        try:
            check_prompts(self.get_model(), [self.config.icon_prompt], allow_empty=True)
        except ExplorerError as err:
            raise ExplorerError(f"--icon-prompt: {err}") from None

    def run(self) -> dict:
        """Run the configured stages in order; returns the summary."""
        started = time.time()
        stages = [s.strip() for s in self.config.stages.split(",") if s.strip()]
        unknown = set(stages) - set(STAGES)
        if unknown:
            raise ExplorerError(f"Unknown stages {sorted(unknown)}; choose from {', '.join(STAGES)}.")
        if int(os.environ.get("WORLD_SIZE", 1)) > 1 and not distributed():
            dist.init_process_group("nccl" if torch.cuda.is_available() else "gloo")
        for flag, folder in (("--out", self.config.out), ("--work-dir", self.work)):
            check_writable(Path(folder), flag)
        self.check_fits()
        if "icons" in stages:
            self.check_icon_prompt()
        self.barrier()  # no rank writes before every rank has checked: a rank's check reads what the others write
        for stage in STAGES:
            if stage in stages and (self.rank == 0 or stage in PARALLEL_STAGES):
                log.info("stage %s (rank %d of %d)", stage, self.rank, self.world_size)
                getattr(self, stage)()
        root = Path(self.config.out)
        if (root / "bundle.json").exists():
            self.summary["bundle_mb"] = round(sum(p.stat().st_size for p in root.rglob("*") if p.is_file()) / 2**20, 2)
        self.summary["seconds"] = round(time.time() - started, 1)
        return self.summary


def main(argv=None) -> None:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(message)s")
    config, plan_only = parse_command(argv)
    try:
        build = Build(config)
        if plan_only:
            print(build.plan().table())
            return
        summary = build.run()
    except ExplorerError as err:
        log.error("%s", err)
        raise SystemExit(2) from None
    except OSError as err:  # a full disk or a folder that went away mid-build; atomic writes left no partial file
        log.error("cannot read or write %s: %s; fix that (free space, another folder), then rerun the same command to resume",
                  err.filename or "a build file", err.strerror or err)
        raise SystemExit(2) from None
    rank = build.rank
    if distributed():
        dist.barrier()
        dist.destroy_process_group()
    if rank == 0:
        print(json.dumps(summary, indent=2))


if __name__ == "__main__":
    main()
