"""Captions of shapes images: several templates and paraphrases, a parser back to factors, the vocabulary."""

import re

import numpy as np
from transformers import CLIPTokenizer

from backend.diffusion.tokenizer import build_clip_tokenizer
from backend.shapes.render import COLOURS, POSITIONS, SHAPES, Factors

# {size} {colour} {shape} {where}: position phrase ("in the top left"); {spot}: bare ("top left corner").
TEMPLATES = (
    "a {size} {colour} {shape} {where} on a {background} background",
    "{colour} {shape}, {size}, {spot}, {background} background",
    "a {size} {colour} {shape} {where}",
    "there is a {size} {colour} {shape} {where} against a {background} background",
    "{background} background with a {size} {colour} {shape} {where}",
    "a {colour} {shape} {where} on a {background} background",
    "a picture of a {size} {colour} {shape} {where}, {background} background",
    "{size} {colour} {shape}, {spot}",
)
SIZE_WORDS = {"small": ("small", "tiny"), "medium": ("medium",), "large": ("large", "big")}
BACKGROUND_WORDS = {"black": ("black",), "gray": ("gray", "grey"), "dark blue": ("dark blue",), "dark green": ("dark green",)}
CORNERS = ("top left", "top right", "bottom left", "bottom right")
MAX_TOKENS = 20  # longest caption is 16 words; plus start and end tokens, with room to spare


def _where(position: str) -> tuple[str, ...]:
    """Phrases placing an object at `position` inside a sentence."""
    if position == "center":
        return ("in the center", "in the middle", "at the center")
    if position in CORNERS:
        return (f"in the {position}", f"in the {position} corner", f"at the {position}")
    if position in ("left", "right"):
        return (f"on the {position}", f"at the {position}")
    return (f"at the {position}", f"in the {position}")


def _spot(position: str) -> tuple[str, ...]:
    """Bare phrases for `position`, for list-like captions."""
    if position == "center":
        return ("center", "middle")
    if position in CORNERS:
        return (position, f"{position} corner")
    return (position,)


def _fix_articles(caption: str) -> str:
    return re.sub(r"\ba (?=orange)", "an ", caption)


def make_caption(factors: Factors, rng: np.random.Generator) -> str:
    """A random template and paraphrase describing `factors`."""
    choose = lambda options: options[rng.integers(len(options))]  # noqa: E731
    caption = choose(TEMPLATES).format(
        size=choose(SIZE_WORDS[factors.size]), colour=factors.colour, shape=factors.shape,
        where=choose(_where(factors.position)), spot=choose(_spot(factors.position)),
        background=choose(BACKGROUND_WORDS[factors.background]),
    )
    return _fix_articles(caption)


def position_caption(factors: Factors, rng: np.random.Generator) -> str:
    """A caption naming the object's position alone, as the list-like templates say it ("top left corner")."""
    spots = _spot(factors.position)
    return spots[rng.integers(len(spots))]


def canonical_caption(factors: Factors) -> str:
    """The plain full caption of `factors` (first template, first paraphrase), used for evaluation."""
    caption = TEMPLATES[0].format(size=factors.size, colour=factors.colour, shape=factors.shape,
                                  where=_where(factors.position)[0], background=factors.background)
    return _fix_articles(caption)


def vocabulary() -> list[str]:
    """Every word (and the comma) that a caption can contain."""
    phrases = list(TEMPLATES) + ["an"] + list(COLOURS) + list(SHAPES)
    phrases += [w for words in SIZE_WORDS.values() for w in words]
    phrases += [w for words in BACKGROUND_WORDS.values() for w in words]
    phrases += [p for pos in POSITIONS for p in _where(pos) + _spot(pos)]
    words = {w for phrase in phrases for w in re.findall(r"[a-z]+|,", re.sub(r"\{\w+\}", " ", phrase))}
    return sorted(words)


def build_tokenizer() -> CLIPTokenizer:
    """The CLIP tokenizer of the shapes world: one token per caption word."""
    return build_clip_tokenizer(vocabulary(), model_max_length=MAX_TOKENS)


def parse_caption(caption: str) -> dict[str, str]:
    """The factors a caption mentions, by name; factors it leaves out are absent from the dict."""
    text = " " + " ".join(re.findall(r"[a-z]+", caption.lower())) + " "
    found: dict[str, str] = {}
    for name, words in BACKGROUND_WORDS.items():
        for word in words:
            if f" {word} background " in text:
                found["background"] = name
                text = text.replace(f" {word} background ", " ")
    tokens = text.split()
    for colour in COLOURS:
        if colour in tokens:
            found["colour"] = colour
    for shape in SHAPES:
        if shape in tokens:
            found["shape"] = shape
    for size, words in SIZE_WORDS.items():
        if any(w in tokens for w in words):
            found["size"] = size
    vertical = next((w for w in ("top", "bottom") if w in tokens), None)
    horizontal = next((w for w in ("left", "right") if w in tokens), None)
    if vertical or horizontal:
        found["position"] = " ".join(w for w in (vertical, horizontal) if w)
    elif "center" in tokens or "middle" in tokens:
        found["position"] = "center"
    return found
