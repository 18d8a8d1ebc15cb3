"""Find the latents for a concept: generate two prompt sets, with and without it, and rank latents by the difference.

An image's activation of a latent is its largest code over positions (what the atlas ranks top
images by) in units of the latent's typical activation, the unit of steering strength. Each
latent's difference of mean activation between the sets gets a Welch 95 % confidence interval
over the images (every prompt × seed is one image).
"""

from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

import torch
from torch import Tensor

from backend.errors import ExplorerError
from backend.serving.progress import with_reporter

MAX_PROMPTS = 32  # per set
MAX_SEEDS = 8
CONFIDENCE = 0.95


@dataclass(frozen=True)
class LatentContrast:
    """One latent's activation with and without the concept, in units of its typical activation."""

    latent: int
    difference: float  # mean with − mean without
    low: float  # the difference's 95 % confidence interval
    high: float
    mean_with: float
    mean_without: float


def image_activations(codes: Tensor, typical: Tensor) -> Tensor:
    """Per latent, the image's largest code over positions in units of its typical activation: Tensor[n_latents].

    Latents that never fired on the atlas (typical 0) count as 0.
    """
    peak = codes.float().amax(0)
    return torch.where(typical > 0, peak / typical.clamp_min(1e-12), torch.zeros_like(peak))


def welch_interval(with_: Tensor, without: Tensor) -> tuple[Tensor, Tensor, Tensor]:
    """Difference of column means of Tensor[a, n] and Tensor[b, n] with its Welch confidence interval (low, high)."""
    from scipy import stats  # slow to import, and only this needs it: not at the app's start

    a, b = len(with_), len(without)
    difference = with_.mean(0) - without.mean(0)
    var_a, var_b = with_.var(0) / a, without.var(0) / b
    se = (var_a + var_b).sqrt()
    dof = (var_a + var_b) ** 2 / (var_a**2 / (a - 1) + var_b**2 / (b - 1))  # Welch–Satterthwaite; NaN where both sets are constant
    quantile = torch.from_numpy(stats.t.ppf(0.5 + CONFIDENCE / 2, dof.double().numpy())).float()
    half = torch.where(se > 0, quantile * se, torch.zeros_like(se))
    return difference, difference - half, difference + half


def rank_latents(with_: Tensor, without: Tensor, n: int) -> list[LatentContrast]:
    """The `n` latents most more active with the concept (largest difference of means), with intervals."""
    difference, low, high = welch_interval(with_, without)
    order = difference.argsort(descending=True, stable=True)[:n]
    mean_with, mean_without = with_.mean(0), without.mean(0)
    return [LatentContrast(int(j), float(difference[j]), float(low[j]), float(high[j]), float(mean_with[j]), float(mean_without[j]))
            for j in order]


def check_sets(with_prompts: list[str], without_prompts: list[str], seeds: list[int]) -> None:
    """Clear errors for sets that are empty, too large, or too small for an interval."""
    for name, prompts in (("with", with_prompts), ("without", without_prompts)):
        if not isinstance(prompts, (list, tuple)) or not prompts:
            raise ExplorerError(f"Give at least one prompt {name} the concept.")
        if len(prompts) > MAX_PROMPTS:
            raise ExplorerError(f"Give at most {MAX_PROMPTS} prompts per set; the set {name} the concept has {len(prompts)}.")
    if not isinstance(seeds, (list, tuple)) or not 1 <= len(seeds) <= MAX_SEEDS:
        raise ExplorerError(f"Give between 1 and {MAX_SEEDS} seeds.")
    if any(isinstance(s, bool) or not isinstance(s, int) or not 0 <= s < 2**32 for s in seeds):
        raise ExplorerError("Seeds must be whole numbers from 0 to 4294967295.")
    if min(len(with_prompts), len(without_prompts)) * len(seeds) < 2:
        raise ExplorerError("Each set needs at least two images (prompts × seeds) for a confidence interval.")


def contrast(generator, with_prompts: list[str], without_prompts: list[str], seeds: list[int], n: int = 20) -> list[LatentContrast]:
    """Latents ranked by how much more they fire on `with_prompts` than on `without_prompts`, over `seeds`.

    The base runs go to the generator together, so they share UNet calls, and stay in its cache.
    """
    check_sets(with_prompts, without_prompts, seeds)
    generator.check_prompts([*with_prompts, *without_prompts])  # every prompt before any image
    typical = generator.bundle.typical_activation
    jobs = [(prompt, seed) for prompts in (with_prompts, without_prompts) for prompt in prompts for seed in seeds]
    with ThreadPoolExecutor(max_workers=min(16, len(jobs))) as pool:
        runs = list(pool.map(with_reporter(lambda job: generator.base(*job)), jobs))
    activations = torch.stack([image_activations(run.codes, typical) for run in runs])
    split = len(with_prompts) * len(seeds)
    return rank_latents(activations[:split], activations[split:], n)
