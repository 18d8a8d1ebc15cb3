"""Export the shapes model in the diffusers folder layout, and copy the best export into the repo."""

import json
import logging
import os
import shutil
from pathlib import Path

import diffusers
import torch
from transformers import CLIPTokenizer

from backend.errors import ExplorerError
from backend.io import write_json
from backend.shapes.ema import module_state
from backend.shapes.model import ModelConfig, build_scheduler, build_text_encoder, build_unet

log = logging.getLogger(__name__)

MODEL_PARTS = ("unet", "text_encoder", "tokenizer", "scheduler", "model_index.json")


def model_index() -> dict:
    """model_index.json of a pixel-space pipeline (no VAE)."""
    return {
        "_class_name": "DiffusionPipeline",
        "_diffusers_version": diffusers.__version__,
        "unet": ["diffusers", "UNet2DConditionModel"],
        "text_encoder": ["transformers", "CLIPTextModel"],
        "tokenizer": ["transformers", "CLIPTokenizer"],
        "scheduler": ["diffusers", "DDIMScheduler"],
        "vae": [None, None],
    }


def save_export(weights: dict[str, torch.Tensor], model_config: ModelConfig, tokenizer: CLIPTokenizer,
                path: Path, step: int) -> Path:
    """Write `weights` (keys `unet.*`, `text_encoder.*`) as fp16 diffusers folders at `path`, atomically."""
    tmp = path.with_name(path.name + ".tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    unet, text_encoder = build_unet(model_config), build_text_encoder(model_config, tokenizer)
    for name, module in (("unet", unet), ("text_encoder", text_encoder)):
        module.load_state_dict(module_state(weights, name))
        module.to(torch.float16).save_pretrained(tmp / name, safe_serialization=True)
    tokenizer.save_pretrained(tmp / "tokenizer")
    build_scheduler(model_config).save_pretrained(tmp / "scheduler")
    write_json(tmp / "model_index.json", model_index())
    write_json(tmp / "training.json", {"step": step})
    shutil.rmtree(path, ignore_errors=True)
    os.replace(tmp, path)
    log.info("exported step %d to %s", step, path)
    return path


def export_score(path: Path) -> float | None:
    """Mean factor accuracy of an evaluated export, or None when it has no metrics."""
    metrics = path / "metrics.json"
    if not metrics.is_file():
        return None
    accuracy = json.loads(metrics.read_text()).get("train_accuracy") or {}
    return sum(accuracy.values()) / len(accuracy) if accuracy else None


def copy_best_export(run_dir: Path, dest: Path) -> Path:
    """Copy the export with the best mean accuracy (the latest when none is scored) to `dest`."""
    exports = sorted(p for p in (run_dir / "exports").glob("step-*") if not p.name.endswith(".tmp"))
    if not exports:
        raise ExplorerError(f"No exports in {run_dir / 'exports'}; train for at least one export interval first.")
    scored = [(s, p) for p in exports if (s := export_score(p)) is not None]
    best = max(scored)[1] if scored else exports[-1]
    tmp = dest.with_name(dest.name + ".tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    for part in (*MODEL_PARTS, "metrics.json", "training.json"):
        source = best / part
        if source.is_dir():
            shutil.copytree(source, tmp / part)
        elif source.is_file():
            shutil.copy2(source, tmp / part)
    shutil.rmtree(dest, ignore_errors=True)
    os.replace(tmp, dest)
    log.info("copied %s (score %s) to %s", best, export_score(best), dest)
    return dest
