"""DDIM sampling with classifier-free guidance, written out plainly and shared by every model.

The loop follows diffusers' StableDiffusionPipeline, but the scheduler's own config decides
the parametrization (epsilon for SD 1.5, v-prediction for the demo model), hooks run at named
sites per step, and a run can start from a cached intermediate latent.
"""

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch
from diffusers import DDIMScheduler
from PIL import Image
from torch import Tensor

from backend.diffusion.hooks import SiteHook, attached
from backend.diffusion.models import DiffusionModel
from backend.errors import ExplorerError

MAX_STEPS = 200


@dataclass
class SampleResult:
    """What one sampler run produced."""

    images: Tensor  # [B, 3, H, W] in [0, 1], CPU float32
    timesteps: Tensor  # [num_steps] scheduler timesteps
    latents: list[Tensor] | None = None  # x before step i for i = 0..num_steps-1, then the final x
    x0_predictions: list[Tensor] | None = None  # the model's clean-image estimate at each step run


def make_scheduler(model: DiffusionModel, num_steps: int) -> DDIMScheduler:
    """A fresh DDIM scheduler from the model's config, so concurrent calls share no state."""
    if not 1 <= num_steps <= MAX_STEPS:
        raise ExplorerError(f"Number of steps must be between 1 and {MAX_STEPS}, got {num_steps}.")
    scheduler = DDIMScheduler.from_config(model.scheduler.config)
    scheduler.set_timesteps(num_steps)
    return scheduler


def check_prompts(model: DiffusionModel, prompts: Sequence[str]) -> None:
    """Reject empty prompts and prompts longer than the text encoder's context."""
    limit = model.tokenizer.model_max_length
    for prompt in prompts:
        if not isinstance(prompt, str) or not prompt.strip():
            raise ExplorerError("The prompt is empty; type a description of the image.")
        n_tokens = len(model.tokenizer(prompt).input_ids)
        if n_tokens > limit:
            raise ExplorerError(f"The prompt is {n_tokens} tokens long; this model reads at most {limit}. Shorten it.")


@torch.inference_mode()
def encode_prompts(model: DiffusionModel, prompts: Sequence[str]) -> Tensor:
    """Text-encoder hidden states for `prompts`: Tensor[B, L, D]."""
    tokens = model.tokenizer(
        list(prompts), padding="max_length", max_length=model.tokenizer.model_max_length,
        truncation=True, return_tensors="pt",
    )
    return model.text_encoder(tokens.input_ids.to(model.device))[0].to(model.dtype)


def initial_noise(model: DiffusionModel, seeds: Sequence[int], height: int, width: int) -> Tensor:
    """Gaussian noise drawn per image on the CPU, so a seed gives the same image on any device."""
    f = model.vae_scale_factor
    shape = (model.unet.config.in_channels, height // f, width // f)
    noise = [torch.randn(shape, generator=torch.Generator().manual_seed(int(s))) for s in seeds]
    return torch.stack(noise).to(model.device, model.dtype)


@torch.inference_mode()
def decode(model: DiffusionModel, latents: Tensor) -> Tensor:
    """Latents (or pixels, for pixel-space models) to images in [0, 1] on the CPU."""
    if model.vae is not None:
        latents = model.vae.decode(latents / model.vae.config.scaling_factor).sample
    return (latents.float() / 2 + 0.5).clamp(0, 1).cpu()


@torch.inference_mode()
def encode_image(model: DiffusionModel, image: Image.Image) -> Tensor:
    """A PIL image to the model's x_0 (VAE latents, or pixels in [-1, 1]), resized to the model's size."""
    height, width = image_size(model)
    pixels = torch.from_numpy(np.asarray(image.convert("RGB").resize((width, height), Image.BICUBIC), dtype=np.float32))
    pixels = (pixels.permute(2, 0, 1)[None] / 127.5 - 1).to(model.device, model.dtype)
    if model.vae is None:
        return pixels
    return model.vae.encode(pixels).latent_dist.mean * model.vae.config.scaling_factor


def image_size(model: DiffusionModel) -> tuple[int, int]:
    """Default (height, width) in pixels of the model's images."""
    side = model.unet.config.sample_size * model.vae_scale_factor
    return side, side


def to_pil(images: Tensor) -> list[Image.Image]:
    """Tensor[B, 3, H, W] in [0, 1] to PIL images."""
    array = (images.permute(0, 2, 3, 1) * 255).round().to(torch.uint8).numpy()
    return [Image.fromarray(a) for a in array]


@torch.inference_mode()
def sample(
    model: DiffusionModel,
    prompts: str | Sequence[str],
    seed: int | Sequence[int] = 0,
    num_steps: int = 25,
    guidance_scale: float = 7.5,
    hooks: Sequence[SiteHook] = (),
    height: int | None = None,
    width: int | None = None,
    start_step: int = 0,
    start_latents: Tensor | None = None,
    keep_latents: bool = False,
    keep_x0: bool = False,
) -> SampleResult:
    """Generate images for `prompts`; image i uses seed `seed + i` (or `seed[i]`).

    With `start_step = s` and `start_latents` = the x a previous run had before step s
    (its `latents[s]`), the run continues from there: steps before s are not recomputed.
    """
    prompts = [prompts] if isinstance(prompts, str) else list(prompts)
    seeds = [seed + i for i in range(len(prompts))] if isinstance(seed, int) else list(seed)
    if len(seeds) != len(prompts):
        raise ExplorerError(f"Got {len(prompts)} prompts but {len(seeds)} seeds.")
    scheduler = make_scheduler(model, num_steps)
    if not 0 <= start_step < num_steps:
        raise ExplorerError(f"start_step must be in [0, {num_steps}), got {start_step}.")
    if start_step > 0 and start_latents is None:
        raise ExplorerError("Starting after step 0 needs the cached latents of a base run.")

    default_height, default_width = image_size(model)
    height, width = height or default_height, width or default_width
    use_cfg = guidance_scale > 1.0
    embeddings = encode_prompts(model, prompts)
    if use_cfg:  # diffusers' batch layout: unconditional rows first, then conditional
        embeddings = torch.cat([encode_prompts(model, [""] * len(prompts)), embeddings])
    cond = slice(len(prompts), 2 * len(prompts)) if use_cfg else slice(0, len(prompts))

    if start_latents is None:
        x = initial_noise(model, seeds, height, width) * scheduler.init_noise_sigma
    else:
        x = start_latents.to(model.device, model.dtype)
    latents = [x] if keep_latents else None
    x0_predictions = [] if keep_x0 else None
    if keep_latents and start_step > 0:  # positions before start_step are not known here
        latents = [None] * start_step + latents

    for step in range(start_step, num_steps):
        t = scheduler.timesteps[step]
        x_in = torch.cat([x, x]) if use_cfg else x
        x_in = scheduler.scale_model_input(x_in, t)
        with attached(model.unet, hooks, step, cond):
            out = model.unet(x_in, t, encoder_hidden_states=embeddings).sample
        if use_cfg:
            out_uncond, out_cond = out.chunk(2)
            out = out_uncond + guidance_scale * (out_cond - out_uncond)
        stepped = scheduler.step(out, t, x)
        x = stepped.prev_sample
        if keep_latents:
            latents.append(x)
        if keep_x0:
            x0_predictions.append(stepped.pred_original_sample)
    return SampleResult(images=decode(model, x), timesteps=scheduler.timesteps, latents=latents, x0_predictions=x0_predictions)
