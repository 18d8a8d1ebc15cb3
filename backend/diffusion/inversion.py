"""DDIM inversion: an image's x_0 walked back up the sampler's schedule, so that a sampling run can reproduce it.

The inverse scheduler (diffusers' DDIMInverseScheduler, from the model's own scheduler config)
takes the steps of the sampler in reverse, with the model's prediction at each noisier timestep
(guidance 1: the conditional prediction for the given prompt, the unconditional one for "").
The states it returns line up with a sampling run's: `states[i]` is the x before sampler step i,
`states[-1]` the image's x_0. An `InversionRun` steps like a `SamplingRun`, so the batched sampler
runs inversions among other users' runs.
"""

from collections.abc import Sequence

from diffusers import DDIMInverseScheduler
from torch import Tensor

from backend.diffusion.hooks import SiteHook
from backend.diffusion.models import DiffusionModel
from backend.errors import ExplorerError
from backend.diffusion.sampler import encode_prompts, make_scheduler

INVERTIBLE_SPACINGS = ("leading", "trailing")  # the spacings DDIMInverseScheduler lays out as the sampler does


class InversionRun:
    """One image's DDIM inversion over `num_steps` steps, advanced a step at a time like a SamplingRun."""

    def __init__(self, model: DiffusionModel, x0: Tensor, prompt: str, num_steps: int):
        make_scheduler(model, num_steps)  # the same checks of num_steps as the sampler's
        spacing = model.scheduler.config.get("timestep_spacing", "leading")
        if spacing not in INVERTIBLE_SPACINGS:
            raise ExplorerError(f"Uploaded images can be inverted only with timestep spacing {' or '.join(INVERTIBLE_SPACINGS)}; "
                                f"this model's scheduler uses {spacing!r}.")
        self.scheduler = DDIMInverseScheduler.from_config(model.scheduler.config)
        self.scheduler.set_timesteps(num_steps)
        self.model, self.num_steps, self.step = model, num_steps, 0
        self.embeddings = encode_prompts(model, [prompt])
        self.x = x0.to(model.device, model.dtype)
        self.states = [self.x]
        self.hooks: Sequence[SiteHook] = ()
        self.cond = slice(0, 1)

    @property
    def done(self) -> bool:
        return self.step >= self.num_steps

    @property
    def rows(self) -> int:
        return 1

    def unet_inputs(self) -> tuple[Tensor, Tensor, Tensor]:
        t = self.scheduler.timesteps[self.step]
        return self.scheduler.scale_model_input(self.x, t), t.expand(1), self.embeddings

    def advance(self, out: Tensor) -> None:
        self.x = self.scheduler.step(out, self.scheduler.timesteps[self.step], self.x).prev_sample
        self.states.append(self.x)
        self.step += 1

    def result(self) -> list[Tensor]:
        """The x before each sampler step, then x_0: Tensor[1, C, h, w] each, num_steps + 1 of them."""
        return self.states[::-1]
