"""Whole-view handlers: the view a link restores on load, and the link of the current view."""

from dataclasses import asdict

import numpy as np

from ui import edit
from ui.browse import latent_id, top_image_of
from ui.explorer import Explorer
from ui.latents import DEFAULT_SORT
from ui.state import MAX_SEED, ViewState, alpha_from_position, parse_int, parse_query, position_from_alpha

DEFAULT_ALPHA = 5.0


def default_order(ex: Explorer) -> list[int]:
    """Every latent in the table's default order (latents.DEFAULT_SORT)."""
    return ex.table.sorted(np.arange(len(ex.table.labels)), DEFAULT_SORT).tolist()


def default_latent(ex: Explorer) -> int:
    """The latent shown before the user picks one: the first in the table's default order."""
    return default_order(ex)[0]


def restore(ex: Explorer, params: dict) -> tuple[str, int, str, float, str, str, int]:
    """From URL query parameters: tab, browse latent, steered latent, its slider position and mode, prompt, seed."""
    view = parse_query(params)
    latent = default_latent(ex) if view.latent is None else latent_id(ex, view.latent)
    prompt, seed = top_image_of(ex, latent)
    alpha = DEFAULT_ALPHA if view.alpha is None else view.alpha
    steered = str(latent) if view.tab == "steer" and view.latent is not None else ""
    return (view.tab, latent, steered, position_from_alpha(alpha), view.mode or "add",
            view.prompt or prompt, seed if view.seed is None else view.seed)


def restore_edit(ex: Explorer, params: dict) -> tuple:
    """From URL query parameters: the Edit panel's controls (`edit.controls`) and the edit to run, None when the link asks none."""
    view = parse_query(params)
    made = {name: value for name, value in asdict(view).items() if name.startswith("edit_")}
    made = made if view.tab == "steer" and view.edit_target is not None else None
    return (*edit.controls(ex, made), made)


def link(tab: str, latent, steered, position, mode, prompt, seed, made: dict | None = None) -> str:
    """The query string that restores the current view (`restore` and `restore_edit` read it back); `made`: the last edit's fields."""
    if tab == "steer":
        steered = str(steered or "").strip()
        return ViewState(tab="steer", latent=parse_int(steered, "Latent id", 0, 10**9) if steered else None,
                         alpha=round(alpha_from_position(position), 3), mode=mode, prompt=prompt or None,
                         seed=None if seed is None else parse_int(seed, "Seed", 0, MAX_SEED), **(made or {})).query()
    return ViewState(tab=tab, latent=None if latent is None else parse_int(latent, "Latent id", 0, 10**9)).query()


def send_to_steer(ex: Explorer, value) -> tuple[str, float, str, str, int]:
    """Steer controls for latent j: the latent, a default strength, add mode, and its top image's prompt and seed."""
    j = latent_id(ex, value)
    prompt, seed = top_image_of(ex, j)
    return str(j), position_from_alpha(DEFAULT_ALPHA), "add", prompt, seed
