"""The Steer tab's handlers: up to three latents, a step window and a mask, applied to one prompt and seed; a pinned result."""

from dataclasses import dataclass
from pathlib import Path

import numpy as np

from backend.errors import ExplorerError
from backend.serving.bundle import Steer
from ui.explorer import Explorer
from ui.image_files import kept
from ui.images import difference, upscale
from ui.state import MAX_SEED, STEER_MODES, alpha_from_position, parse_int

MASK_CHOICES = ("everywhere", "where it fired", "region")
CELLS = ("top left", "top", "top right", "left", "center", "right", "bottom left", "bottom", "bottom right")
MAX_PROMPT_CHARS = 500
HISTORY = 8
SLOTS = 3  # latents steered at once


def check_prompt(prompt) -> str:
    """`prompt` stripped, refusing non-text, empty and absurdly long prompts before they reach the tokenizer."""
    if not isinstance(prompt, str) or not prompt.strip():
        raise ExplorerError("The prompt is empty; type a description of the image.")
    if len(prompt) > MAX_PROMPT_CHARS:
        raise ExplorerError(f"The prompt is {len(prompt)} characters long; use at most {MAX_PROMPT_CHARS}.")
    return prompt.strip()


def check_guidance(value) -> float:
    """Guidance scale as a float, refusing NaN and non-numbers (the generator checks the range)."""
    if isinstance(value, bool) or not isinstance(value, int | float) or value != value:
        raise ExplorerError(f"Guidance scale must be a number, got {value!r}.")
    return float(value)


def window_of(ex: Explorer, start, end) -> tuple[int, int]:
    """The sampler-step window from its two sliders (the generator checks that start ≤ end)."""
    return parse_int(start, "Window start", 0, ex.num_steps - 1), parse_int(end, "Window end", 0, ex.num_steps - 1)


def steers_from(ex: Explorer, controls) -> list[Steer]:
    """Steers from flat (latent, slider position, mode) triples; a slot with no latent is skipped."""
    if len(controls) % 3:
        raise ExplorerError("Each steered latent needs a latent id, a strength and a mode.")
    steers = []
    for latent, position, mode in zip(controls[::3], controls[1::3], controls[2::3]):
        if latent is None or latent == "":
            continue
        if mode not in STEER_MODES:
            raise ExplorerError(f"Steering mode must be one of {', '.join(STEER_MODES)}, got {mode!r}.")
        j = ex.bundle.check_latent(parse_int(latent, "Latent id", -(10**9), 10**9))
        alpha = 0.0 if mode == "ablate" else alpha_from_position(position)
        steers.append(Steer(j, alpha, "scale" if mode == "ablate" else mode))
    return steers


def region_mask(cells) -> np.ndarray:
    """A 3x3 float mask from the names of the chosen grid cells."""
    cells = list(cells or [])
    unknown = [c for c in cells if c not in CELLS]
    if unknown:
        raise ExplorerError(f"Unknown region cells {unknown}; choose from {', '.join(CELLS)}.")
    if not cells:
        raise ExplorerError("The mask is a region, but no cell is ticked; tick at least one cell of the grid.")
    return np.isin(np.array(CELLS), cells).reshape(3, 3).astype(np.float32)


def mask_from(mode: str, cells):
    """The generator's mask argument for a mask choice: "all", "fired" or a 2-D region."""
    if mode not in MASK_CHOICES:
        raise ExplorerError(f"Mask must be one of {', '.join(MASK_CHOICES)}, got {mode!r}.")
    return {"everywhere": "all", "where it fired": "fired"}.get(mode) or region_mask(cells)


def describe(steers: list[Steer]) -> str:
    """One line per steered latent, e.g. 'latent 12: add α = +3.20 s'."""
    if not steers:
        return "No latent chosen: steered = base."
    def one(s: Steer) -> str:
        if s.mode == "scale" and s.strength == 0:
            return f"latent {s.latent}: ablated"
        return f"latent {s.latent}: {s.mode} α = {s.strength:+.2f}" + (" × s" if s.mode == "add" else "")

    return " · ".join(one(s) for s in steers)


@dataclass(frozen=True)
class Steering:
    """The steering controls, checked before any model work (the Steer tab's and an upload's): steers, window and mask."""

    steers: list[Steer]
    window: tuple[int, int]
    mask: object  # the generator's mask argument: "all", "fired" or a 2-D region
    summary: str  # what is applied, e.g. 'latent 12: add α = +3.20 × s · steps 0–19 · everywhere'


def steering_of(ex: Explorer, start, end, mask, cells, controls) -> Steering:
    """Steering from the window sliders, the mask choice and its cells, and flat (latent, slider position, mode) triples."""
    steers, window, where = steers_from(ex, controls), window_of(ex, start, end), mask_from(mask, cells)
    summary = describe(steers)
    if steers:
        cells_text = f" ({', '.join(c for c in CELLS if c in (cells or []))})" if mask == "region" else ""
        summary += f" · steps {window[0]}–{window[1]} · {mask}{cells_text}"
    return Steering(steers, window, where, summary)


def steer(ex: Explorer, prompt, seed, guidance, start, end, mask, cells, history, *controls) -> tuple[str, str, str, list, str]:
    """Base, steered and difference images (as files), the history with this result first, and what was applied."""
    prompt, seed, guidance = check_prompt(prompt), parse_int(seed, "Seed", 0, MAX_SEED), check_guidance(guidance)
    asked = steering_of(ex, start, end, mask, cells, controls)
    result = ex.generator().generate(prompt, seed, asked.steers, window=asked.window, mask=asked.mask, guidance_scale=guidance)
    caption = f"{prompt} · seed {seed} · guidance {guidance:g} · {asked.summary}"
    base, steered, diff = (ex.pictures.path(image) for image in
                           (upscale(result.base), upscale(result.steered), difference(result.base, result.steered)))
    history = [(steered, caption)] + [(picture, text) for picture, text in history or [] if Path(picture).is_file()][: HISTORY - 1]
    return base, steered, diff, history, asked.summary


def pin(history) -> tuple[str, str]:
    """The latest steered result and what made it (the first history entry), to keep beside the next ones."""
    if not history:
        raise ExplorerError("Nothing to pin yet: generate a steered image first.")
    image, caption = history[0]
    return kept(image), f"**Pinned**: {caption}"
