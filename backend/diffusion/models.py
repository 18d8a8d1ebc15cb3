"""Load the diffusers components of an SD-family model from a hub id or a local directory."""

import json
import logging
import re
from dataclasses import dataclass
from pathlib import Path

import torch
from diffusers import AutoencoderKL, DDIMScheduler, UNet2DConditionModel
from huggingface_hub import hf_hub_download
from transformers import CLIPTextModel, CLIPTokenizer

from backend.errors import ExplorerError
from backend.hub import hub_offline
from backend.io import sha256_file

log = logging.getLogger(__name__)

REQUIRED_SUBFOLDERS = ("unet", "text_encoder", "tokenizer", "scheduler")
WEIGHT_SUBFOLDERS = ("unet", "text_encoder", "vae")
LOADED_WEIGHTS = re.compile(r"(diffusion_pytorch_model|model)(-\d{5}-of-\d{5})?\.safetensors")  # what from_pretrained reads


@dataclass
class DiffusionModel:
    """The parts of a text-to-image diffusion model that the sampler needs."""

    unet: UNet2DConditionModel
    text_encoder: CLIPTextModel
    tokenizer: CLIPTokenizer
    scheduler: DDIMScheduler
    vae: AutoencoderKL | None = None  # None: the UNet works in pixel space
    source: str = "<in memory>"

    @property
    def device(self) -> torch.device:
        return self.unet.device

    @property
    def dtype(self) -> torch.dtype:
        return self.unet.dtype

    @property
    def vae_scale_factor(self) -> int:
        if self.vae is None:
            return 1
        return 2 ** (len(self.vae.config.block_out_channels) - 1)


def default_device() -> torch.device:
    """CUDA when present, else the CPU."""
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


def default_dtype(device: torch.device) -> torch.dtype:
    """fp16 on CUDA (SD 1.5 is trained for it), fp32 on the CPU (fp16 matmuls are slow there)."""
    return torch.float16 if device.type == "cuda" else torch.float32


def _model_index(source: str) -> dict | None:
    """The pipeline's model_index.json, or None when the source has none."""
    local = Path(source)
    try:
        path = local / "model_index.json" if local.is_dir() else Path(
            hf_hub_download(source, "model_index.json", local_files_only=hub_offline())
        )
        return json.loads(path.read_text()) if path.is_file() else None
    except Exception:  # a missing or unreachable index only means: no optional parts listed
        return None


def _has_vae(source: str) -> bool:
    local = Path(source)
    if local.is_dir():
        return (local / "vae").is_dir()
    index = _model_index(source) or {}
    return bool(index.get("vae")) and index["vae"][0] is not None


def _load_weights(cls, source: str, subfolder: str, dtype: torch.dtype, offline: bool):
    """from_pretrained that refuses checkpoints leaving parameters randomly initialized.

    diffusers and transformers only warn about missing tensors and initialize them at random;
    for a user that would be a silent fallback to random weights.
    """
    dtype_arg = {"dtype": dtype} if cls is CLIPTextModel else {"torch_dtype": dtype}
    model, info = cls.from_pretrained(source, subfolder=subfolder, use_safetensors=True, local_files_only=offline,
                                      output_loading_info=True, **dtype_arg)
    missing = [k for k in info.get("missing_keys", []) if "position_ids" not in k]
    if missing:
        raise ExplorerError(f"{subfolder} weights in {source!r} lack {len(missing)} tensors (e.g. {sorted(missing)[0]}); the checkpoint does not match its config.")
    return model


def local_model_dir(source: str) -> Path | None:
    """The directory holding `source`'s files: the path itself, or its snapshot in the local hub cache (None: neither)."""
    local = Path(source)
    if local.is_dir():
        return local
    try:
        from huggingface_hub import snapshot_download

        return Path(snapshot_download(source, local_files_only=True))
    except Exception:  # not a cached hub id: nothing local to hash
        return None


def weight_digests(source: str) -> dict[str, str]:
    """sha256 of the weight files the loader reads (no fp16 or non-EMA variants), by path inside the model: {"unet/…": hex}."""
    root = local_model_dir(source)
    if root is None:
        return {}
    return {path.relative_to(root).as_posix(): sha256_file(path)
            for sub in WEIGHT_SUBFOLDERS for path in sorted((root / sub).glob("*.safetensors")) if LOADED_WEIGHTS.fullmatch(path.name)}


def check_weight_digests(source: str, expected: dict[str, str]) -> None:
    """Refuse weights that differ from the ones a bundle was built with, naming the first file that does.

    Call it after `load_model`, which brings a hub model into the local cache; only the files the
    build recorded are hashed.
    """
    root = local_model_dir(source)
    for name, digest in sorted(expected.items()):
        path = root / name if root is not None else None
        if path is None or not path.is_file():
            raise ExplorerError(f"The model lacks {name}, which the bundle was built with; pass --model to use other weights on purpose.")
        if sha256_file(path) != digest:
            raise ExplorerError(f"The model's {name} differs from the one the bundle was built with (sha256 mismatch): "
                                "the file is corrupt or replaced; restore it, or pass --model to use other weights on purpose.")


def save_model(model: DiffusionModel, root: str | Path, weights: bool = True) -> None:
    """Write `model` in SD 1.5's directory layout, which `load_model` reads (weights as safetensors).

    Without `weights` only the configs are written: enough for `model_sizes` and `backend.build --plan`.
    """
    root = Path(root)
    for name in ("unet", "vae"):
        module = getattr(model, name)
        if module is not None:
            module.save_pretrained(root / name) if weights else module.save_config(root / name)
    if weights:
        model.text_encoder.save_pretrained(root / "text_encoder")
    else:
        model.text_encoder.config.save_pretrained(root / "text_encoder")
    model.tokenizer.save_pretrained(root / "tokenizer")
    model.scheduler.save_pretrained(root / "scheduler")
    (root / "model_index.json").write_text(json.dumps({"_class_name": "StableDiffusionPipeline"}))


def model_sizes(source: str | DiffusionModel, dtype: torch.dtype) -> tuple[dict, int]:
    """The UNet's config and the bytes of all the model's weights in `dtype`, read from configs only (no weights loaded).

    The modules are built on the meta device, which allocates nothing, to count their parameters.
    """
    if isinstance(source, DiffusionModel):
        modules = [m for m in (source.unet, source.text_encoder, source.vae) if m is not None]
        return dict(source.unet.config), sum(p.numel() for m in modules for p in m.parameters()) * dtype.itemsize
    offline = hub_offline()
    try:
        unet_config = UNet2DConditionModel.load_config(source, subfolder="unet", local_files_only=offline)
        with torch.device("meta"):
            modules = [UNet2DConditionModel.from_config(unet_config),
                       CLIPTextModel(CLIPTextModel.config_class.from_pretrained(source, subfolder="text_encoder",
                                                                                 local_files_only=offline))]
            if _has_vae(source):
                modules.append(AutoencoderKL.from_config(AutoencoderKL.load_config(source, subfolder="vae", local_files_only=offline)))
    except Exception as err:
        raise ExplorerError(f"Could not read the configs of model {source!r}: {type(err).__name__}: {err}. "
                            "Pass --model with a local directory in the SD 1.5 layout or a cached hub repo id.") from err
    return dict(unet_config), sum(p.numel() for m in modules for p in m.parameters()) * dtype.itemsize


def unet_step_flops(unet_config: dict, rows: int, tokens: int = 77) -> float:
    """FLOPs of one UNet call on `rows` latents at the config's sample size, counted on the meta device (nothing runs)."""
    from torch.utils.flop_counter import FlopCounterMode

    side = int(unet_config["sample_size"])
    with torch.device("meta"), FlopCounterMode(display=False) as counter:
        unet = UNet2DConditionModel.from_config(unet_config)
        unet(torch.zeros(rows, unet_config["in_channels"], side, side), torch.full((rows,), 500),
             encoder_hidden_states=torch.zeros(rows, tokens, unet_config["cross_attention_dim"]))
    return float(counter.get_total_flops())


def load_model(source: str, device: str | torch.device | None = None, dtype: torch.dtype | None = None) -> DiffusionModel:
    """Load unet, text_encoder, tokenizer, scheduler (and vae when present) in the SD 1.5 layout.

    `source` is a local directory or a Hugging Face Hub repo id; with HF_HUB_OFFLINE=1 only
    the local cache is read. Scheduler configs of other classes (SD 1.5 ships PNDM) are read
    into a DDIMScheduler, since the shared sampler is DDIM.
    """
    device = torch.device(device) if device is not None else default_device()
    dtype = dtype or default_dtype(device)
    local = Path(source)
    if local.exists() and not local.is_dir():
        raise ExplorerError(f"Model path {source!r} is a file; pass a directory with {', '.join(REQUIRED_SUBFOLDERS)} subfolders or a hub repo id.")
    if local.is_dir():
        missing = [sub for sub in REQUIRED_SUBFOLDERS if not (local / sub).is_dir()]
        if missing:
            raise ExplorerError(f"Model directory {source!r} lacks {', '.join(m + '/' for m in missing)}; pass a directory in the SD 1.5 layout (unet/, text_encoder/, tokenizer/, scheduler/, optional vae/).")
    offline = hub_offline()
    try:
        unet = _load_weights(UNet2DConditionModel, source, "unet", dtype, offline)
        text_encoder = _load_weights(CLIPTextModel, source, "text_encoder", dtype, offline)
        tokenizer = CLIPTokenizer.from_pretrained(source, subfolder="tokenizer", local_files_only=offline)
        scheduler = DDIMScheduler.from_pretrained(source, subfolder="scheduler", local_files_only=offline)
        vae = _load_weights(AutoencoderKL, source, "vae", dtype, offline) if _has_vae(source) else None
    except ExplorerError:
        raise
    except Exception as err:
        where = "the local directory" if local.is_dir() else ("the local hub cache (offline mode)" if offline else "the Hugging Face Hub")
        raise ExplorerError(
            f"Could not load model {source!r} from {where}: {type(err).__name__}: {err}. "
            "Pass --model with a local directory in the SD 1.5 layout or a hub repo id that is cached or reachable."
        ) from err
    for module in (unet, text_encoder, vae):
        if module is not None:
            module.to(device).eval().requires_grad_(False)
    log.info("loaded %s on %s (%s)%s", source, device, dtype, "" if vae else ", pixel space")
    return DiffusionModel(unet=unet, text_encoder=text_encoder, tokenizer=tokenizer, scheduler=scheduler, vae=vae, source=str(source))
