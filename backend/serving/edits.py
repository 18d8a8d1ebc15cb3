"""Concept edits (DESIGN.md, Steering): where a concept belongs in a base run, and the deltas that put it there.

An edit is a per-position, per-latent amount of feature trajectory: δa_t[p] = Σ_j amount[p, j]·φ_j,t,
the same delta the SteeringHook adds for plain steering, so an edit is a steering with finer masks.
Two kinds:

- swap (A → B): where A fires, remove A's own contribution z[p, j]·φ_j and add B with α times the
  code mass A had there (in units of A's typical activations), so B replaces what A carried;
- → B for a label's concept is the swap from every other value of its factor ("→ colour=red"
  replaces whatever colour the base has): on the shapes demo this was cleaner than adding B on
  top (colour: clean 0.75 against 0.25 at the best strength per image, 16 fresh prompts each);
- add (→ B for typed latents, which name no factor): amount[p, k] = α·w_k·s_k on the positions.

Where a concept belongs is read from the base run itself, not from a classifier: the object's
positions are those whose decoded SAE input stands out from the image's median position (the
background covers most of an image and its positions look alike); a background value belongs on
the rest.
"""

from dataclasses import dataclass

import torch
from torch import Tensor

from backend.errors import ExplorerError
from backend.serving.concepts import Concept

WHERE = ("auto", "object", "background", "all", "fired")
PLACES = {"object": "on the object", "background": "on the background", "all": "everywhere", "fired": "where the concept fired"}


# measured on the demo bundle shipped before dense directions (its decoded rows), not yet on the one shipped now
OBJECT_SPREAD = 1.5  # an object edit's positions: distance above mean + 1.5 std (its core: 0.79 of its cells, precision 0.55)
HALO_SPREAD = 1.0  # a background edit leaves out the object with its halo: mean + 1 std finds 0.94 of its cells


def object_positions(decoded: Tensor, spread: float = OBJECT_SPREAD) -> Tensor:
    """Bool Tensor[P]: positions whose decoded SAE input `decoded` [P, d_in] lies far from the image's median position,
    more than `spread` standard deviations above the mean distance (shapes demo, against the classifier's object masks:
    the recall and precision in OBJECT_SPREAD's and HALO_SPREAD's comments)."""
    distance = (decoded - decoded.median(0).values).norm(dim=1)
    return distance > distance.mean() + spread * distance.std()


def concept_score(codes: Tensor, concept: Concept, typical: Tensor) -> Tensor:
    """Tensor[P]: Σ_j w_j·z[p, j]/s_j, how strongly the concept fires at each position, in typical activations."""
    latents = list(concept.latents)
    weights = torch.tensor(concept.weights, dtype=torch.float32)
    return (codes[:, latents].float() / typical[latents].float().clamp_min(1e-12)) @ weights


def code_mass(codes: Tensor, concept: Concept, typical: Tensor) -> Tensor:
    """Tensor[P]: Σ_j z[p, j]/s_j over the concept's latents (unweighted): how much of it the position carries."""
    latents = list(concept.latents)
    return (codes[:, latents].float() / typical[latents].float().clamp_min(1e-12)).sum(1)


def add_amounts(target: Concept, typical: Tensor, strength: float, where: Tensor) -> tuple[list[int], Tensor]:
    """(latents, amounts Tensor[P, L]) for adding α·Σ_k w_k·s_k·φ_k on the positions `where` [P] (weights in [0, 1])."""
    latents = list(target.latents)
    per_latent = strength * torch.tensor(target.weights) * typical[latents].float()  # [L]
    return latents, where.float()[:, None] * per_latent[None, :]


def swap_amounts(codes: Tensor, source: Concept, target: Concept, typical: Tensor, strength: float,
                 where: Tensor) -> tuple[list[int], Tensor]:
    """(latents, amounts Tensor[P, L]) moving the source's code mass onto the target on the positions `where` [P]."""
    where = where.float()
    removed = -codes[:, list(source.latents)].float() * where[:, None]  # [P, Ls]
    mass = code_mass(codes, source, typical) * where  # [P]
    target_latents, added = add_amounts(target, typical, strength, mass)
    latents = list(dict.fromkeys(list(source.latents) + target_latents))
    amounts = torch.zeros(codes.shape[0], len(latents))
    index = {j: i for i, j in enumerate(latents)}
    amounts[:, [index[j] for j in source.latents]] += removed
    amounts[:, [index[j] for j in target_latents]] += added
    return latents, amounts


def edit_deltas(latents: list[int], amounts: Tensor, feature_trajectories: Tensor) -> Tensor:
    """δa_t[p] = Σ_j amounts[p, j]·φ_j,t: Tensor[T, P, C] for the SteeringHook."""
    return torch.einsum("pl,ltc->tpc", amounts, feature_trajectories[latents].float())


LADDER = (2.0, 3.0, 4.0, 6.0, 8.0)  # strengths an automatic edit tries, run together (below 2 a swap rarely shows)
MAX_EDIT_STRENGTH = 30.0  # a strength by hand: a swap multiplies it by the code mass it removes (a sum over many latents)
MIN_READING = 0.5  # a concept without rivals must reach this mean score (typical activations) on the edited positions
BASE_SHARE = 0.5  # ... and with rivals, beat them and reach this share of the strongest score in the base run


@dataclass(frozen=True)
class EditInfo:
    """What a concept edit did: its concepts, the strength (and whether the edit chose it), and the positions it changed."""

    target: Concept
    source: Concept | None
    removed: Concept | None  # what the edit took away: the source, or the other values of the target's factor
    strength: float
    automatic: bool
    reached: bool | None  # whether the edited run's own codes read the target on the edited positions (None: strength by hand)
    where: str  # "object", "background", "all" or "fired": what "auto" resolved to
    positions: Tensor  # [H, W] weight of the edit at each position of the site's grid


def check_edit_strength(strength) -> float:
    """A concept edit's strength set by hand, as a float in [0, MAX_EDIT_STRENGTH], or an ExplorerError."""
    if isinstance(strength, bool) or not isinstance(strength, int | float) or not 0 <= strength <= MAX_EDIT_STRENGTH:  # NaN too
        raise ExplorerError(f"An edit's strength must be a number between 0 and {MAX_EDIT_STRENGTH:g}, got {strength!r}.")
    return float(strength)


def reads_target(codes: Tensor, base_codes: Tensor, target: Concept, rivals: list[Concept], where: Tensor,
                 typical: Tensor) -> bool:
    """Whether an edited run's `codes` [P, n] read the target on the positions `where` (mean scores there).

    With rivals (the other values of the target's factor, and the source) the target must outdo
    each of them and reach BASE_SHARE of the strongest of them all in the base run (`base_codes`):
    the value the base image showed, at about the strength it showed it. Without rivals it must
    reach MIN_READING. On the shapes demo the codes agree with the classifier for background
    edits, but flip before the image does for colour ones, so the ladder starts at 2.
    """
    weights = where.float() / where.float().sum().clamp_min(1e-12)
    mean = lambda codes_, concept_: float(concept_score(codes_, concept_, typical) @ weights)  # noqa: E731
    score = mean(codes, target)
    if not rivals:
        return score >= MIN_READING
    strongest_before = max(mean(base_codes, c) for c in [target, *rivals])
    return all(score > mean(codes, rival) for rival in rivals) and score >= BASE_SHARE * strongest_before
