"""Concept edits on a built bundle, judged the way a user judges them: did the image change as asked, and nothing else?

Each trial draws fresh factors and a seed far from the atlas, training and test captions, generates
the base image from the plain caption, and reads it with the factor classifier. The target is
another value of the factor that labels latents. Every mechanism edits the same base through the
app's own path (`Bundle.edit`, or `Bundle.generate` for the one-latent steering it replaces); the
prompting baseline writes the target into the caption instead. A trial is *reached* when the
classifier reads the target, *clean* when, besides, every other factor reads as in the base.
"""

from collections.abc import Callable
from dataclasses import asdict, dataclass

import numpy as np
import torch

from backend.diffusion.steering import Steer
from backend.errors import ExplorerError
from backend.evaluation.controllability import labelled_latents
from backend.serving.bundle import Bundle
from backend.serving.concepts import label_values
from backend.shapes.captions import canonical_caption
from backend.shapes.render import Factors, sample_factors

FRESH_SEED = 3_000_000  # seeds of edit trials: the atlas uses 0.., the evaluation's test captions 1_000_000..
EDIT_FACTORS = ("colour", "background", "shape", "size", "position")


@dataclass(frozen=True)
class EditTrial:
    factor: str
    mechanism: str
    target: str
    seed: int
    strength: float | None  # what the edit used (None: prompting)
    reached: bool
    clean: bool


@dataclass(frozen=True)
class Mechanism:
    """One way to make a base image show the target: run(bundle, caption, seed, factor, base value, target) -> (images, strength)."""

    run: Callable
    needs_source: bool = False  # an A → B edit: only where the base's own value labels latents


def _edit(source: bool, strength: float | None) -> Mechanism:
    def run(bundle, caption, seed, factor, base_value, target):
        out = bundle.edit(caption, seed, f"{factor}={target}", source=f"{factor}={base_value}" if source else None, strength=strength)
        return out.steered_images, out.edit.strength
    return Mechanism(run, needs_source=source)


def _added(strength: float) -> Mechanism:
    """The label's latents added where the label belongs, nothing taken away (the label passed as typed, weighted ids)."""
    def run(bundle, caption, seed, factor, base_value, target):
        concept = bundle.concept(f"{factor}={target}")
        out = bundle.edit(caption, seed, dict(zip(concept.latents, concept.weights)), strength=strength, where=concept.place)
        return out.steered_images, strength
    return Mechanism(run)


def _purest_everywhere(bundle, caption, seed, factor, base_value, target, strength=10.0):
    """What steering did before concept edits: the purest target latent added at every position (the old evaluation)."""
    best = labelled_latents(bundle, factor)[target][0]
    return bundle.generate(caption, seed, [Steer(best, strength)]).steered_images, strength


MECHANISMS: dict[str, Mechanism] = {
    "→ B in place of the other values, automatic strength": _edit(source=False, strength=None),
    "A → B, automatic strength": _edit(source=True, strength=None),
    "→ B in place of the other values, strength 2": _edit(source=False, strength=2.0),
    "→ B in place of the other values, strength 4": _edit(source=False, strength=4.0),
    "B's latents added where B belongs, strength 7": _added(7.0),
    "purest latent everywhere, α = 10": Mechanism(_purest_everywhere),
}
PROMPTING = "prompting (target in the caption)"


def judged(factor: str, before: dict, after: dict, target: str) -> tuple[bool, bool]:
    """(reached, clean): the classifier reads the target; and besides, every other factor as in the base."""
    reached = after[factor] == target
    return reached, reached and all(after[f] == before[f] for f in before if f != factor)


def edit_trials(bundle: Bundle, classifier, factors=EDIT_FACTORS, trials: int = 16, mechanisms=tuple(MECHANISMS)) -> list[dict]:
    """`trials` fresh bases per factor, each edited by every mechanism and prompted; a row per (trial, mechanism).

    A base whose reading of the factor has no latent labelled with it gets no A → B trial (there
    is no source concept), so that cell may count fewer trials.
    """
    labelled = label_values(bundle.labels)
    rows = []
    for f_index, factor in enumerate(factors):
        rng = np.random.default_rng(FRESH_SEED + f_index)
        targets = sorted(labelled.get(factor, ()))
        for i in range(trials if targets else 0):
            factors_ = sample_factors(rng, split="all")
            seed = FRESH_SEED + 1000 * f_index + i
            caption = canonical_caption(factors_)
            base = bundle.generate(caption, seed, []).base_run.result.images
            before = classifier.predict(base)[0]
            target = str(rng.choice([v for v in targets if v != before[factor]]))
            outputs = {}
            for name in mechanisms:
                mechanism = MECHANISMS[name]
                if mechanism.needs_source and before[factor] not in labelled[factor]:
                    continue
                try:
                    outputs[name] = mechanism.run(bundle, caption, seed, factor, before[factor], target)
                except ExplorerError:  # the app refuses the edit (e.g. nothing to take away there): the image stays as it was
                    outputs[name] = (base, None)
            prompted = canonical_caption(Factors(**before | {factor: target}))
            outputs[PROMPTING] = (bundle.generate(prompted, seed, []).base_run.result.images, None)
            readings = classifier.predict(torch.cat([images for images, _ in outputs.values()]))
            for (name, (_, strength)), after in zip(outputs.items(), readings):
                reached, clean = judged(factor, before, after, target)
                rows.append(asdict(EditTrial(factor, name, target, seed, strength, reached, clean)))
    return rows


def edit_table(rows: list[dict]) -> dict[str, dict[str, dict]]:
    """Per factor, per mechanism: trials, reached and clean shares, and the median strength used."""
    table: dict[str, dict[str, dict]] = {}
    for row in rows:
        cell = table.setdefault(row["factor"], {}).setdefault(row["mechanism"], {"n": 0, "reached": 0, "clean": 0, "strengths": []})
        cell["n"] += 1
        cell["reached"] += row["reached"]
        cell["clean"] += row["clean"]
        if row["strength"] is not None:
            cell["strengths"].append(row["strength"])
    for cells in table.values():
        for cell in cells.values():
            n, strengths = cell["n"], cell.pop("strengths")
            cell |= {"reached": cell["reached"] / n, "clean": cell["clean"] / n,
                     "median_strength": float(np.median(strengths)) if strengths else None}
    return table


def markdown(table: dict[str, dict[str, dict]]) -> str:
    """The table as markdown: a row per factor and mechanism, reached / clean and the trials behind them (and the
    reconstruction's kept readings, for uploads)."""
    kept = any("kept" in cell for cells in table.values() for cell in cells.values())
    lines = [f"| factor | mechanism | trials |{' reconstruction kept |' * kept} reached | clean | median strength |",
             f"|---|---|---:|{'---:|' * kept}---:|---:|---:|"]
    for factor, cells in table.items():
        for name, cell in cells.items():
            strength = "—" if cell["median_strength"] is None else f"{cell['median_strength']:g}"
            kept_cell = f" {cell['kept']:.2f} |" if kept else ""
            lines.append(f"| {factor} | {name} | {cell['n']} |{kept_cell} {cell['reached']:.2f} | {cell['clean']:.2f} | {strength} |")
    return "\n".join(lines)


GOALS = {"colour": (0.9, 0.7), "background": (0.9, 0.7), "shape": (0.0, 0.5), "size": (0.0, 0.5)}  # issue 25: (reached, clean)
EDIT_MECHANISMS = ("→ B in place of the other values, automatic strength", "A → B, automatic strength")  # what the app does


def goal_lines(table: dict[str, dict[str, dict]]) -> list[str]:
    """One line per factor with a goal: the app's edits (automatic strength, with and without a source) against it."""
    lines = []
    for factor, (reached, clean) in GOALS.items():
        for name in EDIT_MECHANISMS:
            cell = table.get(factor, {}).get(name)
            if cell is not None:
                met = cell["reached"] >= reached and cell["clean"] >= clean
                lines.append(f"- {factor}, {name}: reached {cell['reached']:.2f} (goal ≥ {reached:g}), clean {cell['clean']:.2f} "
                             f"(goal ≥ {clean:g}): **{'met' if met else 'missed'}**")
    return lines
