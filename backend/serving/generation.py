"""Generation for a bundle: cached base runs, steered regeneration from the window start, maps over time."""

import hashlib
import os
import threading
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, replace

import torch
from PIL import Image
from torch import Tensor

from backend.diffusion.hooks import TrajectoryRecorder
from backend.diffusion.inversion import InversionRun
from backend.diffusion.models import DiffusionModel
from backend.diffusion.sampler import (
    SampleResult,
    SamplingRun,
    check_prompts,
    decode,
    encode_pixels,
    image_size,
    pixels,
    psnr,
    to_pil,
)
from backend.diffusion.steering import Steer, SteeringHook, steering_deltas  # Steer: the request type of Bundle.generate
from backend.errors import ExplorerError
from backend.serving.batching import BatchedSampler
from backend.serving.concepts import Concept, rivals_of, taken_away
from backend.serving.edits import (HALO_SPREAD, LADDER, PLACES, WHERE, EditInfo, add_amounts, check_edit_strength, code_mass, edit_deltas,
                                   object_positions, reads_target, swap_amounts)
from backend.serving.progress import with_reporter
from backend.serving.recent import Recent

MASKS = ("all", "fired")
# Below this PSNR an upload's reconstruction is not presented as the upload: SD 1.5's VAE alone gives about 25-30 dB
# on photographs; the demo's pixel-space model retraces its path exactly (100 dB, psnr's cap, on rendered uploads).
FAITHFUL_PSNR = 20.0
# Uploads are inverted and resampled at guidance 1 unless asked otherwise: an empty prompt gives guidance nothing to
# amplify but the steering itself (SteeringHook edits the conditional rows only), and on the demo's rendered uploads
# edits were clean more often at guidance 1 than at generation's 4 (colour 0.25 against 0.00, background 0.38 against
# 0.06: docs/EDITS.md).
UPLOAD_GUIDANCE = 1.0


def base_run_budget() -> int:
    """Bytes of base runs kept for steering: 1/16 of the machine's memory, at most 2 GiB.

    An SD 1.5 run at 512 px holds about 120 MB and a demo run 4 MB, so a 32 GB GPU machine keeps
    16 SD 1.5 bases (one per live user, roughly) and a 16 GB Space about 8.
    """
    try:
        memory = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    except (AttributeError, ValueError, OSError):  # no sysconf (Windows): assume 8 GB
        memory = 8 << 30
    return min(memory // 16, 2 << 30)


def needs_no_base(steers: list[Steer], window: tuple[int, int], mask) -> bool:
    """Whether a steered run can be sampled without its base: from step 0, adding directions (a scale reads the base's
    codes), over every position or a region (not where the base fired)."""
    return window[0] == 0 and all(s.mode == "add" for s in steers) and not (isinstance(mask, str) and mask == "fired")


@dataclass
class BaseRun:
    """An unsteered run, kept so steering can start from its latents and read its codes.

    For an uploaded image it is the run that reproduces it (`Generator.invert`): its latents are the
    inversion's path and its corrections what holds a sampler run on that path.
    """

    result: SampleResult  # with latents before every step
    traj: Tensor  # [P, T, C] the site's trajectory (conditional half)
    codes: Tensor  # [P, n_latents]
    prompt: str  # what the run (and every run steered from it) is conditioned on
    guidance: float
    fidelity: float | None = None  # an uploaded image's reconstruction PSNR in dB (None: a generated image)

    @property
    def image(self) -> Image.Image:
        return to_pil(self.result.images)[0]

    @property
    def faithful(self) -> bool:
        """Whether the run shows what was uploaded (generated runs always do)."""
        return self.fidelity is None or self.fidelity >= FAITHFUL_PSNR

    @property
    def nbytes(self) -> int:
        """Memory held by the run's tensors (an SD 1.5 run at 512 px holds about 120 MB, a demo run well under 1 MB)."""
        result = self.result
        tensors = [result.images, result.timesteps, self.traj, self.codes,
                   *(result.latents or []), *(result.x0_predictions or []), *(result.corrections or [])]
        return sum(t.numel() * t.element_size() for t in tensors)


@dataclass
class Generation:
    """A steered image beside its unsteered base."""

    base: Image.Image
    steered: Image.Image
    base_run: BaseRun
    steered_images: Tensor  # [1, 3, H, W] in [0, 1]
    edit: "EditInfo | None" = None  # what a concept edit did (Generator.edit); None for plain steering


class Generator:
    """Runs the bundle's model at the bundle's site and schedule; concurrent requests share UNet calls."""

    def __init__(self, bundle, model: DiffusionModel, cache_bytes: int | None = None):
        self.bundle, self.model = bundle, model
        schedule = bundle.manifest["schedule"]
        self.num_steps = int(schedule["num_steps"])
        self.recorded_steps = [int(s) for s in schedule["recorded_steps"]]
        self.default_guidance = float(schedule.get("guidance_scale", 7.5))
        self.site = bundle.manifest["site"]
        self.grid = tuple(bundle.manifest["shapes"]["grid"])
        budget = base_run_budget() if cache_bytes is None else cache_bytes
        self.base_runs: Recent[BaseRun] = Recent(budget, size_of=BaseRun.nbytes.fget)
        self._model_lock = threading.RLock()  # hooks live on the shared UNet: calls must not interleave
        self.sampler = BatchedSampler(model, self._model_lock)

    def _guidance(self, guidance_scale: float | None) -> float:
        g = self.default_guidance if guidance_scale is None else float(guidance_scale)
        if not 0.0 <= g <= 30.0:
            raise ExplorerError(f"Guidance scale must be between 0 and 30, got {guidance_scale!r}.")
        return g

    def check_prompts(self, prompts: list[str], allow_empty: bool = False) -> None:
        """Clear errors for prompts longer than the model reads, and for empty ones unless `allow_empty`."""
        check_prompts(self.model, prompts, allow_empty)

    def base(self, prompt: str, seed: int, guidance_scale: float | None = None, allow_empty: bool = False,
             keep: bool = True) -> BaseRun:
        """The unsteered run for (prompt, seed, guidance), from the cache when possible; concurrent asks sample once.

        `allow_empty`: the empty prompt is the unconditional image (feature icons), not a user's mistake. Without `keep`
        a run not in the cache is sampled and not kept (work done ahead leaves visitors' runs in the cache).
        """
        self.check_prompts([prompt], allow_empty)
        key = self._base_key(prompt, seed, guidance_scale)
        if not keep and key not in self.base_runs:
            return self._sample_base(*key)
        return self.base_runs.get(key, lambda: self._sample_base(*key))

    def _base_key(self, prompt: str, seed: int, guidance_scale: float | None) -> tuple[str, int, float]:
        """What a base run is kept by (and `_sample_base`'s arguments)."""
        return prompt, int(seed), self._guidance(guidance_scale)

    def _sample_base(self, prompt: str, seed: int, guidance: float) -> BaseRun:
        recorder = TrajectoryRecorder(self.site, self.recorded_steps)
        result = self.sampler.run(SamplingRun(self.model, prompt, seed, num_steps=self.num_steps, guidance_scale=guidance,
                                              hooks=[recorder], keep_latents=True, keep_x0=True))
        traj = recorder.trajectories()[0]  # [P, T, C]
        return BaseRun(result=result, traj=traj, codes=self.bundle.codes(traj), prompt=prompt, guidance=guidance)

    def invert(self, image: Image.Image, prompt: str = "", guidance_scale: float | None = None, held: bool = True) -> BaseRun:
        """An uploaded image as a base run that reproduces it, steered and edited like a generated one; cached like `base`.

        DDIM inversion (inversion.py, conditioned on `prompt`, unconditional when empty) gives the
        path of states from noise to the image; the base run is the sampler held on that path (at
        UPLOAD_GUIDANCE unless `guidance_scale` is given), keeping what each step missed as corrections that every steered run
        from it adds again. Without steering, a run retraces the path to the image exactly (through
        the VAE's round trip for latent models): 2 × num_steps UNet passes per upload. `held=False`
        samples from the inverted noise without corrections: plain DDIM inversion, the baseline the
        evaluation measures them against.
        """
        prompt = prompt.strip()
        if prompt:
            self.check_prompts([prompt])
        upload = pixels(image, *image_size(self.model))
        guidance = UPLOAD_GUIDANCE if guidance_scale is None else self._guidance(guidance_scale)
        key = ("upload", hashlib.sha256(upload.numpy().tobytes()).hexdigest(), prompt, guidance, bool(held))
        return self.base_runs.get(key, lambda: self._invert(upload, prompt, guidance, held))

    def _invert(self, upload: Tensor, prompt: str, guidance: float, held: bool) -> BaseRun:
        x0 = encode_pixels(self.model, upload)
        states = self.sampler.run(InversionRun(self.model, x0, prompt, self.num_steps))
        recorder = TrajectoryRecorder(self.site, self.recorded_steps)
        result = self.sampler.run(SamplingRun(self.model, prompt, 0, num_steps=self.num_steps, guidance_scale=guidance,
                                              hooks=[recorder], start_latents=states[0], follow=states if held else None,
                                              keep_latents=True, keep_x0=True))
        traj = recorder.trajectories()[0]
        return BaseRun(result=result, traj=traj, codes=self.bundle.codes(traj), prompt=prompt, guidance=guidance,
                       fidelity=psnr(result.images[0], upload))

    @staticmethod
    def _region(mask) -> Tensor | None:
        """A user region as Tensor[h, w] of weights in [0, 1] (None for a named mask), or a clear error."""
        if isinstance(mask, str):
            if mask not in MASKS:
                raise ExplorerError(f"Mask must be one of {', '.join(MASKS)} or a region, got {mask!r}.")
            return None
        try:
            region = torch.as_tensor(mask, dtype=torch.float32)
        except (TypeError, ValueError, RuntimeError):
            raise ExplorerError("A region mask must be a 2-D array of numbers over the image.") from None
        if region.ndim != 2 or region.numel() == 0 or not torch.isfinite(region).all() or region.min() < 0 or region.max() > 1:
            raise ExplorerError("A region mask must be a non-empty 2-D array of weights between 0 and 1.")
        return region

    def _mask(self, mask, steers: list[Steer], run: BaseRun | None) -> Tensor:
        """Positions to edit, Tensor[P]: all, where any steered latent fired in the base, or a user region (these two need
        no base: `run` may be None)."""
        region = self._region(mask)
        if region is not None:
            return torch.nn.functional.interpolate(region[None, None], size=self.grid, mode="area")[0, 0].flatten()
        if mask == "all":
            return torch.ones(self.grid[0] * self.grid[1])
        return (run.codes[:, [s.latent for s in steers]] > 0).any(1).float()

    def generate(self, prompt: str, seed: int, steering: list[Steer], window: tuple[int, int] | None = None,
                 mask="all", guidance_scale: float | None = None, allow_empty: bool = False) -> Generation:
        """Steered image beside its base; sampler steps before the window are taken from the base run.

        A steered run that needs nothing from a base not sampled yet is sampled beside it, sharing its UNet calls, rather
        than after it: see `_beside_base`.
        """
        steers, window = self._check_steering(steering, window, mask)
        if steers and self._base_key(prompt, seed, guidance_scale) not in self.base_runs and needs_no_base(steers, window, mask):
            return self._beside_base(prompt, seed, guidance_scale, allow_empty, steers, window, mask)
        return self._steer(self.base(prompt, seed, guidance_scale, allow_empty), steers, window, mask)

    def _beside_base(self, prompt: str, seed: int, guidance_scale: float | None, allow_empty: bool, steers: list[Steer],
                     window: tuple[int, int], mask) -> Generation:
        """The base run and the steered run sampled at once: a fresh prompt or seed costs one run's wait, not two.

        Only for a steered run that starts at step 0 (from the seed's noise, as the base does) and adds directions over a
        mask that is not read from the base: it then equals the run steered from the finished base (tested).
        """
        self.check_prompts([prompt], allow_empty)
        guidance = self._guidance(guidance_scale)
        deltas = steering_deltas(steers, self.bundle.feature_trajectories, self.bundle.typical_activation, None,
                                 self._mask(mask, steers, None), self.bundle.is_global)
        hook = SteeringHook(self.site, deltas, self.recorded_steps, window)
        with ThreadPoolExecutor(1) as pool:
            base = pool.submit(self.base, prompt, seed, guidance, allow_empty)  # the visitor's bar follows the steered run
            steered = self.sampler.run(SamplingRun(self.model, prompt, seed, num_steps=self.num_steps, guidance_scale=guidance,
                                                   hooks=[hook]))
            run = base.result()
        return Generation(base=run.image, steered=to_pil(steered.images)[0], base_run=run, steered_images=steered.images)

    def steer_image(self, image: Image.Image, steering: list[Steer], prompt: str = "", window: tuple[int, int] | None = None,
                    mask="all", guidance_scale: float | None = None, held: bool = True) -> Generation:
        """`generate` for an uploaded image: steered beside its reconstruction (`invert`)."""
        steers, window = self._check_steering(steering, window, mask)
        return self._steer(self.invert(image, prompt, guidance_scale, held), steers, window, mask)

    def _check_steering(self, steering, window, mask) -> tuple[list[Steer], tuple[int, int]]:
        """The steering entries and window, checked before any model work (clear errors for bad ones)."""
        try:
            steers = [s if isinstance(s, Steer) else Steer(**s) for s in steering]
        except TypeError as err:
            raise ExplorerError(f"Each steering entry needs latent, strength and optionally mode: {err}") from None
        typical = self.bundle.typical_activation  # needs the atlas: fail before any model work
        for steer in steers:
            j = self.bundle.check_latent(steer.latent)
            if steer.mode == "add" and not typical[j] > 0:
                raise ExplorerError(f"Latent {j} never fired on the atlas images, so it has no typical activation to add in units of.")
        self._region(mask)
        return steers, self._window(window)

    def _steer(self, run: BaseRun, steers: list[Steer], window: tuple[int, int], mask) -> Generation:
        if not steers:
            return Generation(base=run.image, steered=run.image, base_run=run, steered_images=run.result.images)
        deltas = steering_deltas(steers, self.bundle.feature_trajectories, self.bundle.typical_activation, run.codes,
                                 self._mask(mask, steers, run), self.bundle.is_global)
        return self._steered(run, deltas, window)

    def _window(self, window) -> tuple[int, int]:
        """The inclusive sampler-step window (default: the whole schedule), or a clear error."""
        try:
            start, end = window if window is not None else (0, self.num_steps - 1)
        except (TypeError, ValueError):
            raise ExplorerError(f"Step window must be a pair (start, end), got {window!r}.") from None
        if not (isinstance(start, int) and isinstance(end, int) and 0 <= start <= end < self.num_steps):
            raise ExplorerError(f"Step window must satisfy 0 ≤ start ≤ end < {self.num_steps}, got {window!r}.")
        return start, end

    def _steered(self, run: BaseRun, deltas: Tensor, window: tuple[int, int], after=(), **extra) -> Generation:
        """The base run resampled from the window's start with `deltas` [T, P, C] added inside the window
        (hooks in `after` see each step's edited output)."""
        hook = SteeringHook(self.site, deltas, self.recorded_steps, window)
        steered = self.sampler.run(SamplingRun(self.model, run.prompt, 0, num_steps=self.num_steps, guidance_scale=run.guidance,
                                               hooks=[hook, *after], start_step=window[0], start_latents=run.result.latents[window[0]],
                                               corrections=run.result.corrections))
        return Generation(base=run.image, steered=to_pil(steered.images)[0], base_run=run, steered_images=steered.images, **extra)

    def edit(self, prompt: str, seed: int, target, source=None, strength: float | None = None, window=None,
             where: str = "auto", guidance_scale: float | None = None) -> Generation:
        """A concept edit (edits.py): → target where it belongs, in place of the other values of its factor (added, for
        typed latents); source → target the same, but only where the source fired, and taking the source away too.

        `strength=None` tries every strength of LADDER at once (one batched run each) and keeps the
        smallest whose run's own codes read the target on the edited positions; an explicit
        strength runs once.
        """
        request = self._check_edit(target, source, strength, window, where)
        return self._edit(self.base(prompt, seed, guidance_scale), *request)

    def edit_image(self, image: Image.Image, target=None, source=None, prompt: str = "", strength: float | None = None,
                   window=None, where: str = "auto", guidance_scale: float | None = None, held: bool = True) -> Generation:
        """`edit` for an uploaded image, beside its reconstruction (`invert`); with no target the reconstruction twice."""
        if target is None:
            if source is not None:
                raise ExplorerError("An edit with a source needs a target: what should the source become?")
            return self.steer_image(image, [], prompt, window, "all", guidance_scale, held)
        request = self._check_edit(target, source, strength, window, where)
        return self._edit(self.invert(image, prompt, guidance_scale, held), *request)

    def _check_edit(self, target, source, strength, window, where) -> tuple:
        """(target, source, strength, window, where) checked before any model work, concepts resolved."""
        bundle = self.bundle
        target = bundle.concept(target)
        source = None if source is None else bundle.concept(source)
        if strength is not None:
            strength = check_edit_strength(strength)
        if source is not None and set(source.latents) & set(target.latents):
            raise ExplorerError(f"The source {source.name} and the target {target.name} share latents; an edit moves one onto the other.")
        image_level = [j for c in (target, source) if c is not None for j in c.latents if bundle.is_global[j]]
        if image_level:
            raise ExplorerError(f"Latents {image_level[:8]} are image-level (one code per image): an edit works on positions; "
                                "steer them on the Steer tab instead.")
        if where not in WHERE:
            raise ExplorerError(f"An edit's positions must be one of {', '.join(WHERE)}, got {where!r}.")
        window = self._window(window)
        typical = bundle.typical_activation
        dead = [j for c in (target, source) if c is not None for j in c.latents if not typical[j] > 0]
        if dead:
            raise ExplorerError(f"Latents {dead[:8]} never fired on the atlas images, so they have no typical activation to edit in "
                                "units of; leave them out of the concept.")
        return target, source, strength, window, where

    def _edit(self, run: BaseRun, target: Concept, source: Concept | None, strength: float | None, window: tuple[int, int],
              where: str) -> Generation:
        bundle, typical = self.bundle, self.bundle.typical_activation
        region, positions = self._edit_positions(run, where, target, source)
        if source is not None:  # A → B works where A fired
            positions = positions * (code_mass(run.codes, source, typical) > 0)
        removed = taken_away(target, source, bundle.labels)
        if removed is not None:  # dead latents among the other values never fire: nothing of theirs to move
            alive = tuple(j for j in removed.latents if typical[j] > 0)
            removed = replace(removed, latents=alive, weights=(1.0 / len(alive),) * len(alive)) if alive else None

        def deltas(alpha: float) -> Tensor:
            latents, amounts = (add_amounts(target, typical, alpha, positions) if removed is None
                                else swap_amounts(run.codes, removed, target, typical, alpha, positions))
            return edit_deltas(latents, amounts, bundle.feature_trajectories)

        edited = positions if removed is None else positions * (code_mass(run.codes, removed, typical) > 0)
        if not edited.any():
            what = f"nothing {PLACES[region]} carries {removed.name}" if removed is not None else f"it has no position {PLACES[region]}"
            raise ExplorerError(f"Nothing to edit in this image: {what}. Try another 'where' or another source.")
        info = dict(target=target, source=source, removed=removed, where=region, positions=edited.reshape(self.grid))
        if strength is not None:
            return self._steered(run, deltas(strength), window, edit=EditInfo(strength=strength, automatic=False, reached=None, **info))
        rivals = rivals_of(target, source, bundle.labels)
        with ThreadPoolExecutor(len(LADDER)) as pool:  # concurrent runs share the batched sampler's UNet calls
            tries = list(pool.map(with_reporter(lambda alpha: self._recorded(run, deltas(alpha), window)), LADDER))
        reading = [reads_target(codes, run.codes, target, rivals, edited, typical) for _, codes in tries]
        chosen = reading.index(True) if any(reading) else len(LADDER) - 1
        generation = tries[chosen][0]
        generation.edit = EditInfo(strength=LADDER[chosen], automatic=True, reached=reading[chosen], **info)
        return generation

    def _edit_positions(self, run: BaseRun, where: str, target: Concept, source: Concept | None) -> tuple[str, Tensor]:
        """(what `where` resolved to, Tensor[P] of 0/1): the object's core or the background without the object's halo,
        read from the base run's codes, every position, or where the concept (the source when there is one) fired."""
        if where == "auto":
            where = (source or target).place
        if where == "all":
            return where, torch.ones(run.codes.shape[0])
        if where == "fired":
            fired = run.codes[:, list((source or target).latents)] > 0
            return where, fired.any(1).float()
        sae = self.bundle.sae
        with torch.no_grad():
            decoded = sae.decode(run.codes)
            if sae.dense_directions:  # what the codes leave to the dense directions (backend/method/dense_part.py)
                decoded = decoded + sae.dense_part(self.bundle.encoding.to_rows(run.traj))
        if where == "object":
            return where, object_positions(decoded).float()
        return where, (~object_positions(decoded, HALO_SPREAD)).float()

    def _recorded(self, run: BaseRun, deltas: Tensor, window: tuple[int, int]) -> tuple[Generation, Tensor]:
        """A steered run and the codes of its edited trajectory (steps before the window are the base run's).

        The codes read the site after each step's edit, so they say whether the edit, with what the
        model made of it, carries the target: on the shapes demo this agreed with the factor
        classifier's reading of the image on 0.95 of background edits.
        """
        later = [s for s in self.recorded_steps if s >= window[0]]
        recorder = TrajectoryRecorder(self.site, later)
        generation = self._steered(run, deltas, window, after=[recorder])
        traj = torch.cat([run.traj[:, : len(self.recorded_steps) - len(later)], recorder.trajectories()[0]], dim=1)
        return generation, self.bundle.codes(traj)

    def x0_images(self, run: BaseRun) -> list[Image.Image]:
        """The model's clean-image estimate at each recorded step: what it "sees" at step t."""
        return to_pil(torch.cat([decode(self.model, run.result.x0_predictions[s]) for s in self.recorded_steps]))

    def maps_over_time(self, run: BaseRun, latents: list[int]) -> Tensor:
        """Prefix-encoded maps (DESIGN.md step 6): Tensor[len(latents), T, H, W]."""
        return self.bundle.maps_over_time(run.traj, latents, run.codes)
