"""Concepts: weighted sets of latents, named by a label ("colour=red"), a Find result or typed latent ids.

A label's concept is every latent labelled with it, weighted by how specific the latent is to the
value (purity × enrichment of its top images, atlas/latents.json): one latent is rarely the whole
concept, and the measured edits reach more often with many latents than with the purest one alone.
Weights are normalized to sum to 1, so a concept's strength is in the same units as one latent's:
α·Σ_j w_j·s_j·φ_j at α = 1 is a typical firing of the concept.
"""

import operator
import re
from dataclasses import dataclass, replace

from backend.errors import ExplorerError

OBJECT_FACTORS = ("colour", "shape", "size")  # attributes of the object: an edit belongs on its positions
MAX_LATENTS = 4096


@dataclass(frozen=True)
class Concept:
    """A weighted set of latents; `factor` says where it belongs when it comes from a label (None otherwise)."""

    name: str
    latents: tuple[int, ...]
    weights: tuple[float, ...]  # ≥ 0, summing to 1
    factor: str | None = None
    value: str | None = None

    @property
    def belongs_on_object(self) -> bool | None:
        """True for an object attribute, False for a background value, None when the concept does not say."""
        if self.factor in OBJECT_FACTORS:
            return True
        return False if self.factor == "background" else None

    @property
    def place(self) -> str:
        """Where an edit of it works by default: "object", "background", or "all" when the concept does not say."""
        return {True: "object", False: "background", None: "all"}[self.belongs_on_object]


def _normalized(name: str, weighted: dict[int, float], factor=None, value=None) -> Concept:
    total = sum(weighted.values())
    if not weighted or not total > 0:
        raise ExplorerError(f"The concept {name!r} has no latent with a positive weight; name at least one latent.")
    latents = tuple(sorted(weighted, key=lambda j: (-weighted[j], j)))
    return Concept(name, latents, tuple(weighted[j] / total for j in latents), factor, value)


def label_values(labels: list[dict]) -> dict[str, set[str]]:
    """The factor values that label at least one latent, by factor."""
    values: dict[str, set[str]] = {}
    for label in labels:
        if label.get("factor"):
            values.setdefault(label["factor"], set()).add(label["value"])
    return values


def from_label(labels: list[dict], factor: str, value: str) -> Concept:
    """The latents labelled `factor = value`, weighted by purity × enrichment."""
    known = label_values(labels)
    if factor not in known:
        raise ExplorerError(f"No latent is labelled with the factor {factor!r}; factors: {', '.join(sorted(known)) or 'none'}.")
    if value not in known[factor]:
        raise ExplorerError(f"No latent is labelled {factor}={value!r}; values of {factor}: {', '.join(sorted(known[factor]))}.")
    weighted = {j: float(label["purity"]) * float(label.get("enrichment", 1.0))
                for j, label in enumerate(labels) if label.get("factor") == factor and label.get("value") == value}
    return _normalized(f"{factor}={value}", weighted, factor, value)


def _latent_id(j, n_latents: int) -> int:
    try:
        j = operator.index(j)
    except TypeError:
        raise ExplorerError(f"Latent id {j!r} is not an integer.") from None
    if not 0 <= j < n_latents:
        raise ExplorerError(f"Latent {j} does not exist; this bundle has latents 0 to {n_latents - 1}.")
    return j


def _weight(w) -> float:
    if isinstance(w, bool) or not isinstance(w, int | float) or not 0 <= w <= 1e6:  # NaN fails the range too
        raise ExplorerError(f"A latent's weight in a concept must be a number between 0 and 1e6, got {w!r}.")
    return float(w)


def from_latents(pairs: list[tuple], n_latents: int, name: str) -> Concept:
    """Typed latent ids with their weights (a Find result's differences, or 1 each); repeated ids add up."""
    if len(pairs) > MAX_LATENTS:
        raise ExplorerError(f"A concept holds at most {MAX_LATENTS} latents, got {len(pairs)}.")
    weighted: dict[int, float] = {}
    for j, w in pairs:
        j = _latent_id(j, n_latents)
        weighted[j] = weighted.get(j, 0.0) + _weight(w)
    return _normalized(name, weighted)


def parse_text(text: str, labels: list[dict], n_latents: int) -> Concept:
    """'factor=value' or latent ids separated by commas or spaces ('12, 40 7')."""
    text = text.strip()
    if not text:
        raise ExplorerError("The concept is empty; write a label like 'colour=red' or latent ids like '12, 40'.")
    if "=" in text:
        factor, _, value = (part.strip() for part in text.partition("="))
        return from_label(labels, factor, value)
    ids = [part for part in re.split(r"[,\s]+", text) if part]
    if not all(part.isascii() and part.isdigit() and len(part) < 10 for part in ids):
        raise ExplorerError(f"Cannot read the concept {text[:80]!r}: write a label like 'colour=red' or latent ids like '12, 40'.")
    return from_latents([(int(part), 1.0) for part in ids], n_latents, text)


def concept(spec, labels: list[dict], n_latents: int) -> Concept:
    """A Concept from a spec: a Concept, 'factor=value', typed ids (text or a list of ints),
    {latent: weight}, or a Find result (rows with `latent` and a positive `difference`)."""
    if isinstance(spec, Concept):  # checked like typed ids; it keeps its factor only where latents are labelled with it
        if len(spec.latents) != len(spec.weights):
            raise ExplorerError(f"The concept {spec.name!r} has {len(spec.latents)} latents but {len(spec.weights)} weights.")
        made = from_latents(list(zip(spec.latents, spec.weights)), n_latents, spec.name)
        known = spec.value in label_values(labels).get(spec.factor, ())
        return replace(made, factor=spec.factor, value=spec.value) if known else made
    if isinstance(spec, str):
        return parse_text(spec, labels, n_latents)
    if isinstance(spec, dict):
        return from_latents(list(spec.items()), n_latents, "latents " + ", ".join(map(str, list(spec)[:8])))
    if isinstance(spec, list | tuple):
        if spec and all(hasattr(row, "latent") and hasattr(row, "difference") for row in spec):
            found = [(row.latent, row.difference) for row in spec if row.difference > 0]
            return from_latents(found, n_latents, "found: " + ", ".join(str(j) for j, _ in found[:8]))
        return from_latents([(j, 1.0) for j in spec], n_latents, "latents " + ", ".join(map(str, spec[:8])))
    raise ExplorerError(f"A concept is a label like 'colour=red', latent ids or a Find result, got {type(spec).__name__}.")


def other_values(target: Concept, labels: list[dict]) -> Concept | None:
    """Every latent labelled with another value of the target's factor (None for a concept without a factor):
    what an edit "→ colour=red" takes away, whichever colour the base image has."""
    if target.factor is None:
        return None
    others = [(j, 1.0) for j, label in enumerate(labels) if label.get("factor") == target.factor and label.get("value") != target.value]
    if not others:
        return None
    latents = tuple(j for j, _ in others)
    return Concept(f"{target.factor}≠{target.value}", latents, tuple(1.0 / len(latents) for _ in latents), target.factor)


def taken_away(target: Concept, source: Concept | None, labels: list[dict]) -> Concept | None:
    """What an edit removes where it works: the source and the other values of the target's factor (so no third
    value stays behind: "colour=green → colour=red" also clears cyan that fired on the green object); None: add only."""
    others = other_values(target, labels)
    if source is None or others is None:
        return source or others
    latents = tuple(dict.fromkeys(source.latents + others.latents))
    return Concept(f"{source.name} and {others.name}", latents, (1.0 / len(latents),) * len(latents), target.factor)


def rivals_of(target: Concept, source: Concept | None, labels: list[dict]) -> list[Concept]:
    """What the target must outdo for an edit to count as reached: the other values of its factor, and the source."""
    rivals = [] if source is None else [source]
    if target.factor is not None:
        rivals += [from_label(labels, target.factor, value) for value in sorted(label_values(labels)[target.factor])
                   if value != target.value and (source is None or value != source.value or source.factor != target.factor)]
    return rivals
