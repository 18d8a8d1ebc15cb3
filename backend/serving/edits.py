"""Concept edits (DESIGN.md, Steering): where a concept belongs in a base run, and the deltas that put it there.

An edit is a per-position, per-latent amount of feature trajectory: δa_t[p] = Σ_j amount[p, j]·φ_j,t,
the same delta the SteeringHook adds for plain steering, so an edit is a steering with finer masks.
Two kinds:

- add (→ B): amount[p, k] = α·w_k·s_k on the positions where B belongs;
- swap (A → B): where A fires, remove A's own contribution z[p, j]·φ_j and add B with α times the
  code mass A had there (in units of A's typical activations), so B replaces what A carried.

Where a concept belongs is read from the base run itself, not from a classifier: the object's
positions are those whose decoded SAE input stands out from the image's median position (the
background covers most of an image and its positions look alike); a background value belongs on
the rest.
"""

from dataclasses import dataclass

import torch
from torch import Tensor

from backend.serving.concepts import Concept

WHERE = ("auto", "object", "background", "all", "fired")


def object_positions(decoded: Tensor) -> Tensor:
    """Bool Tensor[P]: positions whose decoded SAE input `decoded` [P, d_in] lies far from the image's median position.

    "Far" is more than one standard deviation above the mean distance: on the shapes demo this
    finds 0.94 of the object's grid cells, with about as many edge and halo cells beside them.
    """
    distance = (decoded - decoded.median(0).values).norm(dim=1)
    return distance > distance.mean() + distance.std()


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


LADDER = (2.0, 3.0, 4.5, 7.0, 10.0, 15.0)  # strengths an automatic edit tries (typical activations), run together


@dataclass(frozen=True)
class EditInfo:
    """What a concept edit did: its concepts, the strength (and whether the edit chose it), and the positions it changed."""

    target: Concept
    source: Concept | None
    strength: float
    automatic: bool
    reached: bool  # whether the steered run's own codes read the target on the edited positions (automatic strength only)
    where: str  # "object", "background", "all" or "fired": what "auto" resolved to
    positions: Tensor  # [H, W] weight of the edit at each position of the site's grid


def reads_target(codes: Tensor, target: Concept, rivals: list[Concept], where: Tensor, typical: Tensor) -> bool:
    """Whether `codes` [P, n] fire more for the target than for every rival on the positions `where` (mean score).

    Rivals are the other values of the target's factor (a label's concept), or the source; with
    neither, the target must reach a typical firing (score 1) on average there.
    """
    weights = where.float() / where.float().sum().clamp_min(1e-12)
    score = float(concept_score(codes, target, typical) @ weights)
    if not rivals:
        return score >= 1.0
    return all(score > float(concept_score(codes, rival, typical) @ weights) for rival in rivals)
