"""Train the shapes text-to-image model: `python -m backend.shapes.train --help`.

Runs until killed (or --max-steps). Every few minutes the full state is checkpointed into the
run directory (`--resume` continues exactly: data and noise are pure functions of the step),
and every quarter hour the EMA weights are exported in the diffusers layout and evaluated.
"""

import argparse
import dataclasses
import inspect
import json
import logging
import os
import re
import shutil
import signal
import sys
import time
from pathlib import Path

import torch
import torch.nn.functional as F
from safetensors.torch import load_file
from tqdm import tqdm
from transformers import CLIPTokenizer

from backend.errors import ExplorerError
from backend.io import write_json, write_safetensors
from backend.shapes.captions import build_tokenizer
from backend.shapes.dataset import training_batch
from backend.shapes.ema import EMA, module_state
from backend.shapes.evaluate import evaluate_export
from backend.shapes.export import copy_best_export, save_export
from backend.shapes.model import ModelConfig, build_scheduler, build_text_encoder, build_unet

log = logging.getLogger("backend.shapes.train")

KEEP_CHECKPOINTS = 2


@dataclasses.dataclass
class TrainConfig:
    """Training options; each is also a command-line flag."""

    run_dir: str = "/work/runs/shapes"  # checkpoints, exports, samples and the log; outside the repo
    resume: bool = False  # continue the run in run_dir (its model and data settings win over flags)
    init_from: str = ""  # start a new run from an export's weights and tokenizer (e.g. checkpoints/shapes-model), at its step
    batch_size: int = 64
    lr: float = 3e-4
    warmup_steps: int = 200
    weight_decay: float = 0.01
    grad_clip: float = 1.0
    caption_dropout: float = 0.1  # share of empty captions, which classifier-free guidance needs
    position_caption_share: float = 0.3  # share of captions naming only the position, so position words get learned
    layout_share: float = 0.3  # share of each batch whose timesteps come from the schedule's top layout_band
    layout_band: int = 100  # top timesteps, where the noisy input hardly shows where the object is (Trainer.timesteps)
    ema_decay: float = 0.999
    max_steps: int = 0  # 0: run until killed
    checkpoint_minutes: float = 5.0
    export_minutes: float = 15.0
    eval_images: int = 64  # generated images scored by the factor classifier at each export
    data_seed: int = 0
    seed: int = 0
    threads: int = 0  # torch CPU threads; 0: every core while the machine is otherwise idle, else 1
    export_to: str = ""  # copy the best export of run_dir here (e.g. checkpoints/shapes-model) and exit


# Flags a resumed run takes from the command line; all others come from its config.json.
SCHEDULE_FIELDS = ("run_dir", "max_steps", "checkpoint_minutes", "export_minutes", "eval_images", "threads")
# What a run made before a setting existed did instead: its resume goes on that way, not with today's default.
SETTINGS_BEFORE_THEY_EXISTED = {"init_from": "", "layout_share": 0.0, "position_caption_share": 0.0}


def field_help(cls) -> dict[str, str]:
    """The trailing comment of each field of a dataclass, as its --help text."""
    return dict(re.findall(r"^\s+(\w+):[^#\n]*#\s*(.+)$", inspect.getsource(cls), re.M))


def parse_args(argv: list[str] | None = None) -> tuple[TrainConfig, ModelConfig]:
    """Command-line flags from the fields of TrainConfig and ModelConfig."""
    parser = argparse.ArgumentParser(prog="python -m backend.shapes.train", description=__doc__,
                                     formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    for cls in (TrainConfig, ModelConfig):
        group = parser.add_argument_group(cls.__name__)
        helps = field_help(cls)
        for field in dataclasses.fields(cls):
            flag = "--" + field.name.replace("_", "-")
            if field.type is bool:
                group.add_argument(flag, action="store_true", help=helps.get(field.name))
            elif field.type == tuple[int, ...]:
                group.add_argument(flag, type=lambda s: tuple(int(v) for v in s.split(",")), default=field.default,
                                   help=helps.get(field.name, "comma-separated integers"))
            else:
                group.add_argument(flag, type=field.type, default=field.default, help=helps.get(field.name))
    args = vars(parser.parse_args(argv))
    pick = lambda cls: cls(**{f.name: args[f.name] for f in dataclasses.fields(cls)})  # noqa: E731
    return pick(TrainConfig), pick(ModelConfig)


def setup_logging(run_dir: Path) -> None:
    """Log to run_dir/train.log and to stderr."""
    run_dir.mkdir(parents=True, exist_ok=True)
    fmt = logging.Formatter("%(asctime)s %(levelname)s %(message)s", "%Y-%m-%d %H:%M:%S")
    root = logging.getLogger()
    root.setLevel(logging.INFO)
    for handler in (logging.FileHandler(run_dir / "train.log"), logging.StreamHandler(sys.stderr)):
        handler.setFormatter(fmt)
        root.addHandler(handler)


def adapt_threads(config: TrainConfig) -> None:
    """With --threads 0, use every core only while no other job runs.

    Threads of one op wait for each other, so on a shared machine one descheduled thread
    stalls them all: there one thread trains faster than two.
    """
    if config.threads:
        torch.set_num_threads(config.threads)
        return
    others = os.getloadavg()[0] - torch.get_num_threads()  # 1-minute load of everything but this run
    wanted = (os.cpu_count() or 1) if others < 0.5 else 1
    if wanted != torch.get_num_threads():
        log.info("load from other jobs %.1f: %d threads", max(others, 0.0), wanted)
        torch.set_num_threads(wanted)


def lr_at(steps_done: int, config: TrainConfig) -> float:
    """Linear warmup over the run's first steps (a run started from an export warms its fresh optimizer too), then constant."""
    return config.lr * min(1.0, (steps_done + 1) / config.warmup_steps)


def run_tokenizer(run_dir: Path, config: TrainConfig) -> CLIPTokenizer:
    """The run's own tokenizer, saved at its start, so code changes never renumber a resumed run's tokens.

    A run started from an export takes the export's tokenizer: its weights know those token ids.
    """
    path = run_dir / "tokenizer"
    if config.resume:
        return CLIPTokenizer.from_pretrained(path)
    tokenizer = CLIPTokenizer.from_pretrained(Path(config.init_from) / "tokenizer") if config.init_from else build_tokenizer()
    tokenizer.save_pretrained(path)
    return tokenizer


def load_export_weights(path: Path) -> tuple[dict[str, torch.Tensor], int]:
    """The fp32 weights of an export, keyed `<module>.<parameter>`, and the training step it was taken at."""
    files = {"unet": path / "unet" / "diffusion_pytorch_model.safetensors",
             "text_encoder": path / "text_encoder" / "model.safetensors"}
    missing = [str(f) for f in (*files.values(), path / "tokenizer") if not f.exists()]
    if missing:
        raise ExplorerError(f"{path} is not a shapes-model export: missing {', '.join(missing)}.")
    weights = {f"{name}.{k}": v.float() for name, f in files.items() for k, v in load_file(f).items()}
    training = path / "training.json"
    return weights, json.loads(training.read_text())["step"] if training.is_file() else 0


class Trainer:
    """The model, optimizer and EMA of one run, with checkpointing and export."""

    def __init__(self, config: TrainConfig, model_config: ModelConfig, device: torch.device):
        self.config, self.model_config, self.device = config, model_config, device
        self.run_dir = Path(config.run_dir)
        start = load_export_weights(Path(config.init_from)) if config.init_from and not config.resume else None
        self.tokenizer = run_tokenizer(self.run_dir, config)
        torch.manual_seed(config.seed)  # the initial weights; later randomness is seeded per step
        self.unet = build_unet(model_config).to(device)
        self.text_encoder = build_text_encoder(model_config, self.tokenizer).to(device)
        self.scheduler = build_scheduler(model_config)
        self.modules = {"unet": self.unet, "text_encoder": self.text_encoder}
        params = [p for m in self.modules.values() for p in m.parameters()]
        self.optimizer = torch.optim.AdamW(params, lr=config.lr, weight_decay=config.weight_decay)
        self.ema = EMA(self.modules, config.ema_decay)
        self.alphas_cumprod = self.scheduler.alphas_cumprod.to(device)
        self.step = self.first_step = 0  # first_step: where this run began (an export's step, or 0)
        self.train_seconds = 0.0
        if start:
            self.load_weights(*start)

    def state_tensors(self) -> dict[str, torch.Tensor]:
        """Live weights, keyed `<module>.<parameter>`."""
        return {f"{name}.{k}": v for name, m in self.modules.items() for k, v in m.state_dict().items()}

    def load_weights(self, weights: dict[str, torch.Tensor], step: int) -> None:
        """Start from `weights` (live and EMA alike) at training step `step`."""
        for name, module in self.modules.items():
            try:
                module.load_state_dict(module_state(weights, name))
            except RuntimeError as err:
                raise ExplorerError(f"--init-from weights do not fit the model flags ({name}): {err}") from err
        self.ema.shadow = {k: v.to(self.device).clone() for k, v in weights.items()}
        self.step = self.first_step = step

    def timesteps(self, n: int, gen: torch.Generator) -> torch.Tensor:
        """Uniform timesteps, except a `layout_share` of them drawn from the top `layout_band`.

        Where the object is gets decided in the first sampling steps, from input that is almost pure
        noise; at every lower noise level the input itself shows the position, so uniform sampling
        gives position words a gradient in only a few percent of examples.
        """
        total = self.scheduler.config.num_train_timesteps
        uniform = torch.randint(0, total, (n,), generator=gen)
        top = torch.randint(total - self.config.layout_band, total, (n,), generator=gen)
        return torch.where(torch.rand(n, generator=gen) < self.config.layout_share, top, uniform)

    def loss(self, images: torch.Tensor, captions: list[str]) -> torch.Tensor:
        """v-prediction MSE at the timesteps above; noise drawn from a generator seeded by the step."""
        gen = torch.Generator().manual_seed(self.config.seed * 1_000_003 + self.step)
        noise = torch.randn(images.shape, generator=gen).to(self.device)
        t = self.timesteps(len(images), gen).to(self.device)
        images = images.to(self.device)
        a = self.alphas_cumprod[t].sqrt().view(-1, 1, 1, 1)
        s = (1 - self.alphas_cumprod[t]).sqrt().view(-1, 1, 1, 1)
        noisy, target = a * images + s * noise, a * noise - s * images
        ids = self.tokenizer(captions, padding="max_length", max_length=self.tokenizer.model_max_length,
                             truncation=True, return_tensors="pt").input_ids.to(self.device)
        with torch.autocast("cuda", dtype=torch.bfloat16, enabled=self.device.type == "cuda"):
            hidden = self.text_encoder(ids)[0]
            pred = self.unet(noisy, t, encoder_hidden_states=hidden).sample
        return F.mse_loss(pred.float(), target)

    def train_step(self) -> float:
        """One optimizer step on the batch of the current step."""
        images, captions = training_batch(self.step, self.config.batch_size, self.config.data_seed, self.config.caption_dropout,
                                          position_caption_share=self.config.position_caption_share)
        for group in self.optimizer.param_groups:
            group["lr"] = lr_at(self.step - self.first_step, self.config)
        loss = self.loss(images, captions)
        self.optimizer.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_([p for m in self.modules.values() for p in m.parameters()], self.config.grad_clip)
        self.optimizer.step()
        self.step += 1
        self.ema.update(self.modules, self.step)
        return loss.item()

    def save_checkpoint(self) -> None:
        """Write the full training state to checkpoints/step-N, then point latest.json at it."""
        name = f"step-{self.step:07d}"
        final = self.run_dir / "checkpoints" / name
        tmp = final.with_name(name + ".tmp")
        shutil.rmtree(tmp, ignore_errors=True)
        tmp.mkdir(parents=True)
        write_safetensors(tmp / "model.safetensors", self.state_tensors())
        write_safetensors(tmp / "ema.safetensors", self.ema.shadow)
        torch.save(self.optimizer.state_dict(), tmp / "optimizer.pt")  # private resume state, never shipped
        write_json(tmp / "state.json", {"step": self.step, "first_step": self.first_step, "train_seconds": self.train_seconds})
        shutil.rmtree(final, ignore_errors=True)
        os.replace(tmp, final)
        write_json(self.run_dir / "latest.json", {"checkpoint": f"checkpoints/{name}", "step": self.step})
        old = sorted(p for p in (self.run_dir / "checkpoints").glob("step-*") if not p.name.endswith(".tmp"))
        for path in old[:-KEEP_CHECKPOINTS]:
            shutil.rmtree(path)
        log.info("checkpoint %s", final)

    def load_checkpoint(self) -> None:
        """Restore the state that latest.json points at."""
        latest = json.loads((self.run_dir / "latest.json").read_text())
        path = self.run_dir / latest["checkpoint"]
        weights = load_file(path / "model.safetensors", device=str(self.device))
        for name, module in self.modules.items():
            module.load_state_dict(module_state(weights, name))
        self.ema.shadow = load_file(path / "ema.safetensors", device=str(self.device))
        self.optimizer.load_state_dict(torch.load(path / "optimizer.pt", map_location=self.device, weights_only=True))
        state = json.loads((path / "state.json").read_text())
        self.step, self.train_seconds = state["step"], state["train_seconds"]
        self.first_step = state.get("first_step", 0)  # checkpoints from before --init-from all began at 0
        log.info("resumed from %s at step %d", path, self.step)

    def export(self) -> Path:
        """Save the EMA model as fp16 diffusers folders in exports/step-N, evaluate it, point `export` at it."""
        path = save_export(self.ema.shadow, self.model_config, self.tokenizer,
                           self.run_dir / "exports" / f"step-{self.step:07d}", self.step)
        try:
            evaluate_export(path, self.config.eval_images)
        except Exception:  # a failed evaluation must not end an hours-long run; the export is saved
            log.exception("evaluation of %s failed", path)
        link, tmp_link = self.run_dir / "export", self.run_dir / "export.tmp"
        if tmp_link.is_symlink():
            tmp_link.unlink()
        os.symlink(path.relative_to(self.run_dir), tmp_link)
        os.replace(tmp_link, link)
        return path


def prepare_run(config: TrainConfig, model_config: ModelConfig) -> tuple[TrainConfig, ModelConfig]:
    """Check the run directory; on resume, take model and data settings from its config.json."""
    run_dir = Path(config.run_dir)
    saved = run_dir / "config.json"
    if config.resume:
        if not (run_dir / "latest.json").is_file():
            raise ExplorerError(f"No checkpoint to resume in {run_dir}; drop --resume to start a new run.")
        stored = json.loads(saved.read_text())
        train = {**SETTINGS_BEFORE_THEY_EXISTED, **stored["train"], **{k: getattr(config, k) for k in SCHEDULE_FIELDS}, "resume": True}
        model = {k: tuple(v) if isinstance(v, list) else v for k, v in stored["model"].items()}
        return TrainConfig(**train), ModelConfig(**model)
    if (run_dir / "latest.json").exists():
        raise ExplorerError(f"{run_dir} already holds a run; pass --resume to continue it or choose another --run-dir.")
    write_json(saved, {"train": dataclasses.asdict(config), "model": dataclasses.asdict(model_config)})
    return config, model_config


def train(config: TrainConfig, model_config: ModelConfig) -> None:
    """Train until killed or max_steps; checkpoint on the way and on SIGTERM/SIGINT."""
    torch.set_num_threads(config.threads or 1)
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    trainer = Trainer(config, model_config, device)
    if config.resume:
        trainer.load_checkpoint()
    n_params = sum(p.numel() for m in trainer.modules.values() for p in m.parameters())
    log.info("device %s, %d threads, %.2fM parameters, config %s %s", device, torch.get_num_threads(), n_params / 1e6,
             dataclasses.asdict(config), dataclasses.asdict(model_config))

    stop = {"flag": False}

    def request_stop(signum, _frame):
        log.info("signal %d: checkpointing and stopping", signum)
        stop["flag"] = True

    signal.signal(signal.SIGTERM, request_stop)
    signal.signal(signal.SIGINT, request_stop)
    last_checkpoint = last_export = last_report = time.monotonic()
    losses: list[float] = []
    report_step = trainer.step
    bar = tqdm(initial=trainer.step, total=config.max_steps or None, mininterval=30, unit="step")
    while not stop["flag"] and (not config.max_steps or trainer.step < config.max_steps):
        started = time.monotonic()
        losses.append(trainer.train_step())
        trainer.train_seconds += time.monotonic() - started
        bar.update(1)
        now = time.monotonic()
        if now - last_report >= 60:
            rate = (trainer.step - report_step) * config.batch_size / (now - last_report)
            log.info("step %d loss %.4f lr %.2e %.1f img/s", trainer.step, sum(losses) / len(losses),
                     lr_at(trainer.step - trainer.first_step, config), rate)
            bar.set_postfix(loss=f"{sum(losses) / len(losses):.4f}", img_s=f"{rate:.1f}")
            losses, report_step, last_report = [], trainer.step, now
            adapt_threads(config)
        if now - last_checkpoint >= config.checkpoint_minutes * 60:
            trainer.save_checkpoint()
            last_checkpoint = time.monotonic()
        if now - last_export >= config.export_minutes * 60:
            trainer.export()
            last_export = last_report = time.monotonic()
            report_step = trainer.step
    bar.close()
    trainer.save_checkpoint()
    trainer.export()


def main(argv: list[str] | None = None) -> None:
    """Entry point of `python -m backend.shapes.train`."""
    config, model_config = parse_args(argv)
    try:
        if config.export_to:
            logging.basicConfig(level=logging.INFO, format="%(levelname)s %(message)s")
            copy_best_export(Path(config.run_dir), Path(config.export_to))
            return
        config, model_config = prepare_run(config, model_config)
        setup_logging(Path(config.run_dir))
        train(config, model_config)
    except ExplorerError as err:  # bad flags, run directory or --init-from export: a message, not a traceback
        sys.exit(str(err))


if __name__ == "__main__":
    main()
