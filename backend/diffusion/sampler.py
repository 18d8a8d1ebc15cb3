"""DDIM sampling with classifier-free guidance, written out plainly and shared by every model.

The loop follows diffusers' StableDiffusionPipeline, but the scheduler's own config decides
the parametrization (epsilon for SD 1.5, v-prediction for the demo model), hooks run at named
sites per step, and a run can start from a cached intermediate latent.
"""

import threading
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch
from diffusers import DDIMScheduler
from PIL import Image
from torch import Tensor

from backend.diffusion.hooks import RowHooks, SiteHook, attached_rows
from backend.diffusion.models import DiffusionModel
from backend.errors import ExplorerError

MAX_STEPS = 200
# Fast tokenizers keep padding and truncation settings on one shared Rust object, so concurrent calls with
# different settings (a length check beside a padded encoding) corrupt each other: calls go one at a time.
TOKENIZER_LOCK = threading.Lock()


@dataclass
class SampleResult:
    """What one sampler run produced."""

    images: Tensor  # [B, 3, H, W] in [0, 1], CPU float32
    timesteps: Tensor  # [num_steps] scheduler timesteps
    latents: list[Tensor] | None = None  # x before step i for i = 0..num_steps-1, then the final x
    x0_predictions: list[Tensor] | None = None  # the model's clean-image estimate at each step run
    corrections: list[Tensor] | None = None  # what each step missed of the path a `follow` run was held on


def make_scheduler(model: DiffusionModel, num_steps: int) -> DDIMScheduler:
    """A fresh DDIM scheduler from the model's config, so concurrent calls share no state."""
    if not 1 <= num_steps <= MAX_STEPS:
        raise ExplorerError(f"Number of steps must be between 1 and {MAX_STEPS}, got {num_steps}.")
    scheduler = DDIMScheduler.from_config(model.scheduler.config)
    scheduler.set_timesteps(num_steps)
    return scheduler


def check_prompts(model: DiffusionModel, prompts: Sequence[str], allow_empty: bool = False) -> None:
    """Reject prompts longer than the text encoder's context, and empty ones unless `allow_empty`.

    A user's empty prompt is a mistake; the feature icons ask for it on purpose (the unconditional image).
    """
    limit = model.tokenizer.model_max_length
    for prompt in prompts:
        if not isinstance(prompt, str) or not (prompt.strip() or allow_empty and prompt == ""):
            raise ExplorerError("The prompt is empty; type a description of the image.")
        with TOKENIZER_LOCK:
            n_tokens = len(model.tokenizer(prompt).input_ids)
        if n_tokens > limit:
            raise ExplorerError(f"The prompt is {n_tokens} tokens long; this model reads at most {limit}. Shorten it.")


@torch.inference_mode()
def encode_prompts(model: DiffusionModel, prompts: Sequence[str]) -> Tensor:
    """Text-encoder hidden states for `prompts`: Tensor[B, L, D]."""
    with TOKENIZER_LOCK:
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


def pixels(image: Image.Image, height: int, width: int) -> Tensor:
    """A PIL image resized to (height, width) as Tensor[3, H, W] in [0, 1]."""
    array = np.asarray(image.convert("RGB").resize((width, height), Image.BICUBIC), dtype=np.float32)
    return torch.from_numpy(array).permute(2, 0, 1) / 255


def psnr(image: Tensor, reference: Tensor) -> float:
    """Peak signal-to-noise ratio in dB of images in [0, 1] (capped at 100 dB for identical images)."""
    mse = float(((image.float() - reference.float()) ** 2).mean())
    return min(100.0, 10 * np.log10(1 / mse)) if mse > 0 else 100.0


@torch.inference_mode()
def encode_pixels(model: DiffusionModel, upload: Tensor) -> Tensor:
    """Tensor[3, H, W] in [0, 1] at the model's size (`pixels`) to the model's x_0: VAE latents, or pixels in [-1, 1]."""
    x = (upload[None] * 2 - 1).to(model.device, model.dtype)
    if model.vae is None:
        return x
    return model.vae.encode(x).latent_dist.mean * model.vae.config.scaling_factor


def image_size(model: DiffusionModel) -> tuple[int, int]:
    """Default (height, width) in pixels of the model's images."""
    side = model.unet.config.sample_size * model.vae_scale_factor
    return side, side


def to_pil(images: Tensor) -> list[Image.Image]:
    """Tensor[B, 3, H, W] in [0, 1] to PIL images."""
    array = (images.permute(0, 2, 3, 1) * 255).round().to(torch.uint8).numpy()
    return [Image.fromarray(a) for a in array]


class SamplingRun:
    """One request's sampler state: advanced a step at a time, alone (`sample`) or batched with others (`step_together`).

    Image i uses seed `seed + i` (or `seed[i]`). With `start_step = s` and `start_latents` = the x
    a previous run had before step s (its `latents[s]`), the run continues from there: steps
    before s are not recomputed.

    `follow` (the x before every step and after the last, as from an inversion) holds the run on
    that path: after each step x is set to the next state, and what the step missed is kept in
    `corrections`. A run given those `corrections` adds them after its steps, so without hooks it
    retraces the path; with hooks the same corrections are added to the hooked steps.
    """

    def __init__(self, model: DiffusionModel, prompts: str | Sequence[str], seed: int | Sequence[int] = 0, num_steps: int = 25,
                 guidance_scale: float = 7.5, hooks: Sequence[SiteHook] = (), height: int | None = None, width: int | None = None,
                 start_step: int = 0, start_latents: Tensor | None = None, keep_latents: bool = False, keep_x0: bool = False,
                 follow: Sequence[Tensor] | None = None, corrections: Sequence[Tensor] | None = None):
        prompts = [prompts] if isinstance(prompts, str) else list(prompts)
        seeds = [seed + i for i in range(len(prompts))] if isinstance(seed, int) else list(seed)
        if len(seeds) != len(prompts):
            raise ExplorerError(f"Got {len(prompts)} prompts but {len(seeds)} seeds.")
        self.scheduler = make_scheduler(model, num_steps)
        if not 0 <= start_step < num_steps:
            raise ExplorerError(f"start_step must be in [0, {num_steps}), got {start_step}.")
        if start_step > 0 and start_latents is None:
            raise ExplorerError("Starting after step 0 needs the cached latents of a base run.")
        self.model, self.hooks, self.guidance_scale = model, list(hooks), guidance_scale
        self.step, self.num_steps = start_step, num_steps
        self.use_cfg = guidance_scale > 1.0
        embeddings = encode_prompts(model, prompts)
        if self.use_cfg:  # diffusers' batch layout: unconditional rows first, then conditional
            embeddings = torch.cat([encode_prompts(model, [""] * len(prompts)), embeddings])
        self.embeddings = embeddings
        self.cond = slice(len(prompts), 2 * len(prompts)) if self.use_cfg else slice(0, len(prompts))
        if start_latents is None:
            default_height, default_width = image_size(model)
            noise = initial_noise(model, seeds, height or default_height, width or default_width)
            self.x = noise * self.scheduler.init_noise_sigma
        else:
            self.x = start_latents.to(model.device, model.dtype)
        self.latents = [None] * start_step + [self.x] if keep_latents else None  # positions before start_step are not known here
        self.x0_predictions = [] if keep_x0 else None
        if follow is not None and (start_step > 0 or corrections is not None):
            raise ExplorerError("A run held on a path (follow) starts at step 0 and makes its own corrections.")
        for path, name in ((follow, "follow"), (corrections, "corrections")):
            if path is not None and len(path) != num_steps + (name == "follow"):
                raise ExplorerError(f"{name} must hold one tensor per sampler step{' and the final x' * (name == 'follow')}.")
        self.follow = follow
        self.corrections = list(corrections) if corrections is not None else [] if follow is not None else None

    @property
    def done(self) -> bool:
        return self.step >= self.num_steps

    @property
    def rows(self) -> int:
        """UNet batch rows this run takes: one per image, two with classifier-free guidance."""
        return self.embeddings.shape[0]

    def unet_inputs(self) -> tuple[Tensor, Tensor, Tensor]:
        """(x_in [rows, ...], timesteps [rows], text embeddings [rows, L, D]) for this run's next step."""
        t = self.scheduler.timesteps[self.step]
        x_in = torch.cat([self.x, self.x]) if self.use_cfg else self.x
        return self.scheduler.scale_model_input(x_in, t), t.expand(self.rows), self.embeddings

    def advance(self, out: Tensor) -> None:
        """Take the UNet's output for this run's rows: guidance, then one scheduler step."""
        if self.use_cfg:
            out_uncond, out_cond = out.chunk(2)
            out = out_uncond + self.guidance_scale * (out_cond - out_uncond)
        stepped = self.scheduler.step(out, self.scheduler.timesteps[self.step], self.x)
        self.x = stepped.prev_sample
        if self.follow is not None:
            self.x = self.follow[self.step + 1].to(self.x)
            self.corrections.append(self.x - stepped.prev_sample)
        elif self.corrections is not None:
            self.x = self.x + self.corrections[self.step].to(self.x)
        self.step += 1
        if self.latents is not None:
            self.latents.append(self.x)
        if self.x0_predictions is not None:
            self.x0_predictions.append(stepped.pred_original_sample)

    def result(self) -> SampleResult:
        """The finished run's images (decoded here) and what it was asked to keep."""
        return SampleResult(images=decode(self.model, self.x), timesteps=self.scheduler.timesteps, latents=self.latents,
                            x0_predictions=self.x0_predictions, corrections=self.corrections if self.follow is not None else None)


@torch.inference_mode()
def step_together(model: DiffusionModel, runs: Sequence[SamplingRun]) -> None:
    """Advance every run by one sampler step in a single UNet call; runs may be at different steps.

    Each run's hooks see only its own rows (at its own step), so a run's result does not depend
    on what it was batched with, up to float rounding of the larger matrix products.
    """
    parts, offset = [], 0
    for run in runs:
        parts.append(RowHooks(slice(offset, offset + run.rows), run.step, run.cond, run.hooks))
        offset += run.rows
    x_in, t, embeddings = (torch.cat(tensors) for tensors in zip(*(run.unet_inputs() for run in runs)))
    with attached_rows(model.unet, parts):
        out = model.unet(x_in, t, encoder_hidden_states=embeddings).sample
    for run, part in zip(runs, parts):
        run.advance(out[part.rows])


def sample(model: DiffusionModel, prompts: str | Sequence[str], seed: int | Sequence[int] = 0, **options) -> SampleResult:
    """Generate images for `prompts` with one `SamplingRun` (its arguments) stepped alone to the end."""
    run = SamplingRun(model, prompts, seed, **options)
    while not run.done:
        step_together(model, [run])
    return run.result()
