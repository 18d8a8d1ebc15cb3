"""View state in the URL (`?tab=steer&latent=12&alpha=3&prompt=...`, `&edit_target=colour%3Dred`) and the strength scales."""

import math
import re
from dataclasses import asdict, dataclass
from urllib.parse import urlencode

from backend.errors import ExplorerError
from backend.serving.edits import WHERE, check_edit_strength

TABS = ("browse", "steer", "inspect")
STEER_MODES = ("add", "scale", "ablate")
MAX_ALPHA = 50.0
CURVE = 4.0  # steepness of the exponential slider: larger is finer near 0
MAX_SEED = 2**31 - 1
INTEGER = re.compile(r"[+-]?[0-9]{1,15}", re.ASCII)  # 15 digits: beyond every id and seed range here


def alpha_from_position(position: float) -> float:
    """Steering strength α for a slider position in [-1, 1]: signed, exponential, ±MAX_ALPHA at the ends."""
    if isinstance(position, bool) or not isinstance(position, int | float) or not math.isfinite(position) or abs(position) > 1:
        raise ExplorerError(f"Strength slider position must be a number between -1 and 1, got {position!r}.")
    magnitude = MAX_ALPHA * math.expm1(CURVE * abs(position)) / math.expm1(CURVE)
    return math.copysign(magnitude, position)


def position_from_alpha(alpha: float) -> float:
    """The slider position that gives strength α (inverse of `alpha_from_position`)."""
    if isinstance(alpha, bool) or not isinstance(alpha, int | float) or not math.isfinite(alpha) or abs(alpha) > MAX_ALPHA:
        raise ExplorerError(f"Strength must be a number within ±{MAX_ALPHA:g}, got {alpha!r}.")
    return math.copysign(math.log1p(abs(alpha) / MAX_ALPHA * math.expm1(CURVE)) / CURVE, alpha)


def parse_int(value, what: str, low: int, high: int) -> int:
    """`value` (int, integral float or ASCII digit string) as an int in [low, high], or an ExplorerError naming `what`.

    Only ASCII digits count: `str.isdigit` also accepts "²" and other digits `int` refuses, and
    `int` refuses strings over 4300 digits, so both are checked here, before any conversion.
    """
    if isinstance(value, str):
        text = value.strip()
        if not INTEGER.fullmatch(text):
            shown = repr(text)  # escapes (\x1f, \U0002ebe1) can make the echo 10 times longer than the text
            shown = shown if len(shown) <= 40 else shown[:40] + "…"
            raise ExplorerError(f"{what} must be a whole number between {low} and {high}, got {shown}.")
        value = int(text)
    if isinstance(value, float) and math.isfinite(value) and value.is_integer():
        value = int(value)
    if isinstance(value, bool) or not isinstance(value, int):
        raise ExplorerError(f"{what} must be a whole number, got {type(value).__name__}.")
    if not low <= value <= high:
        raise ExplorerError(f"{what} must be between {low} and {high}, got {value if abs(value) < 10**15 else 'a larger number'}.")
    return value


@dataclass(frozen=True)
class ViewState:
    """What a shared link restores: the tab, a latent, its strength and mode, a prompt and seed, and a concept edit
    (its target and source as typed: a label or latent ids, where, and its strength; none: automatic)."""

    tab: str = "browse"
    latent: int | None = None
    alpha: float | None = None
    mode: str | None = None
    prompt: str | None = None
    seed: int | None = None
    edit_target: str | None = None
    edit_source: str | None = None
    edit_where: str | None = None
    edit_strength: float | None = None

    def query(self) -> str:
        """The URL query string for this view, e.g. '?tab=steer&latent=12&alpha=3'."""
        fields = {k: (f"{v:g}" if isinstance(v, float) else v) for k, v in asdict(self).items() if v is not None}
        return "?" + urlencode(fields)


def parse_query(params: dict) -> ViewState:
    """The view a URL's query parameters ask for; unknown keys are ignored, malformed values are an ExplorerError."""
    tab = params.get("tab", "browse")
    if tab not in TABS:
        raise ExplorerError(f"The link asks for tab {tab!r}; tabs are {', '.join(TABS)}.")
    mode = params.get("mode")
    if mode is not None and mode not in STEER_MODES:
        raise ExplorerError(f"The link asks for steering mode {mode!r}; modes are {', '.join(STEER_MODES)}.")
    where = params.get("edit_where")
    if where is not None and where not in WHERE:
        raise ExplorerError(f"The link asks to edit at {where!r}; choices are {', '.join(WHERE)}.")
    alpha, edit_strength = (link_number(params.get(name), check) for name, check in (("alpha", position_from_alpha),
                                                                                     ("edit_strength", check_edit_strength)))
    latent = params.get("latent")
    seed = params.get("seed")
    return ViewState(
        tab=tab,
        latent=None if latent is None else parse_int(latent, "Latent id", 0, 10**9),
        alpha=alpha, mode=mode, prompt=params.get("prompt") or None,
        seed=None if seed is None else parse_int(seed, "Seed", 0, MAX_SEED),
        edit_target=params.get("edit_target") or None, edit_source=params.get("edit_source") or None,
        edit_where=where, edit_strength=edit_strength,
    )


def link_number(text: str | None, check) -> float | None:
    """A strength from a link (None when absent), range-checked by `check`."""
    if text is None:
        return None
    try:
        value = float(text)
    except ValueError:
        raise ExplorerError(f"The link's strength {text!r} is not a number.") from None
    check(value)
    return value
