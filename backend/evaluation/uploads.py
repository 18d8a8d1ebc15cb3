"""Edits of uploaded images on a built bundle, judged against what was uploaded.

Each trial renders a shapes image with the renderer (never the model) from a seed far from the
training renders and the other evaluations, and reads it with the factor classifier. The upload is
inverted (Generator.invert) and edited towards another value of the factor that labels latents,
through the app's own path (`Bundle.edit_image`). *Kept* is the share of the five factor readings
of the reconstruction that equal the upload's (1 by construction for the app's held runs on a
pixel-space model such as the demo's, which end on the upload; on SD 1.5 it measures the VAE's
round trip); an edit is *reached* when the classifier reads the
target, *clean* when, besides, every other factor reads as uploaded. The prompting baseline inverts
with the upload's caption and samples again with the target written into it, replaying the
inversion's corrections.
"""

from dataclasses import asdict, dataclass

import numpy as np
import torch

from backend.diffusion.sampler import SamplingRun, image_size, pixels
from backend.errors import ExplorerError
from backend.evaluation.edits import edit_table
from backend.serving.bundle import Bundle
from backend.serving.concepts import label_values
from backend.shapes.captions import canonical_caption
from backend.shapes.render import Factors, render

UPLOAD_SEED = 7_000_000_000  # renders of upload trials: training renders use data_seed · 10^12 + step · batch + i, small steps
UPLOAD_FACTORS = ("colour", "background")


@dataclass(frozen=True)
class UploadMechanism:
    """How an upload is inverted and edited: `held` replays the inversion's corrections (the app's way)."""

    held: bool = True
    generation_guidance: bool = False  # at the bundle's guidance of generation, else at what the app uses for uploads
    caption: bool = False  # invert with the upload's caption, else the empty prompt
    start: int = 0  # the edit's first sampler step
    prompting: bool = False  # no latents: the target written into the caption


UPLOAD_MECHANISMS = {
    "held inversion, → B automatic": UploadMechanism(),
    "held inversion, → B automatic, from step 4": UploadMechanism(start=4),
    "held inversion with the caption, → B automatic": UploadMechanism(caption=True),
    "held inversion at generation's guidance, → B automatic": UploadMechanism(generation_guidance=True),
    "plain DDIM inversion, → B automatic": UploadMechanism(held=False),
    "prompting: inverted with the caption, sampled with the target's": UploadMechanism(caption=True, prompting=True),
}
UPLOAD_GOALS = {"kept": 0.9, "colour": (0.8, 0.6)}  # issue 28: reconstruction readings kept; colour (reached, clean)


@dataclass(frozen=True)
class UploadTrial:
    factor: str
    mechanism: str
    target: str
    seed: int
    strength: float | None
    kept: float
    reached: bool
    clean: bool


def _edited(bundle: Bundle, image, factors: Factors, factor: str, target: str, mechanism: UploadMechanism):
    """(the reconstruction's images, the edited images, the strength used) for one mechanism."""
    generator = bundle.generator
    prompt = canonical_caption(factors) if mechanism.caption else ""
    guidance = generator.default_guidance if mechanism.generation_guidance else None
    run = generator.invert(image, prompt, guidance, mechanism.held)
    if mechanism.prompting:
        caption = canonical_caption(Factors(**factors.as_dict() | {factor: target}))
        edited = generator.sampler.run(SamplingRun(generator.model, caption, 0, num_steps=generator.num_steps, guidance_scale=run.guidance,
                                                   start_latents=run.result.latents[0], corrections=run.result.corrections)).images
        return run.result.images, edited, None
    window = (mechanism.start, generator.num_steps - 1)
    try:
        out = bundle.edit_image(image, f"{factor}={target}", prompt=prompt, window=window, guidance_scale=guidance,
                                held=mechanism.held)
    except ExplorerError:  # the app refuses the edit (nothing to take away there): the image stays as it was
        return run.result.images, run.result.images, None
    return run.result.images, out.steered_images, out.edit.strength


def upload_trials(bundle: Bundle, classifier, factors=UPLOAD_FACTORS, trials: int = 16, mechanisms=tuple(UPLOAD_MECHANISMS)) -> list[dict]:
    """`trials` rendered uploads per factor, each inverted and edited by every mechanism; a row per (trial, mechanism)."""
    labelled = label_values(bundle.labels)
    height, width = image_size(bundle.generator.model)
    rows = []
    for f_index, factor in enumerate(factors):
        rng = np.random.default_rng(UPLOAD_SEED + f_index)
        targets = sorted(labelled.get(factor, ()))
        for i in range(trials if targets else 0):
            seed = UPLOAD_SEED + 1000 * f_index + i
            image, factors_ = render(seed, width, split="all")
            uploaded = classifier.predict(pixels(image, height, width)[None])[0]
            target = str(rng.choice([v for v in targets if v != uploaded[factor]]))
            for name in mechanisms:
                rebuilt, edited, strength = _edited(bundle, image, factors_, factor, target, UPLOAD_MECHANISMS[name])
                reread, after = classifier.predict(torch.cat([rebuilt, edited]))
                kept = sum(reread[f] == uploaded[f] for f in uploaded) / len(uploaded)
                reached = after[factor] == target
                clean = reached and all(after[f] == uploaded[f] for f in uploaded if f != factor)
                rows.append(asdict(UploadTrial(factor, name, target, seed, strength, kept, reached, clean)))
    return rows


def upload_table(rows: list[dict]) -> dict[str, dict[str, dict]]:
    """Per factor, per mechanism: the edit table's cells (edits.py) with the share of reconstruction readings kept."""
    table = edit_table(rows)
    for factor, cells in table.items():
        for name, cell in cells.items():
            cell["kept"] = float(np.mean([row["kept"] for row in rows if row["factor"] == factor and row["mechanism"] == name]))
    return table


def upload_goal_lines(table: dict[str, dict[str, dict]]) -> list[str]:
    """The app's way (the first mechanism) against issue 28's goals: readings kept by the reconstruction, colour reached and clean."""
    app = next(iter(UPLOAD_MECHANISMS))
    lines = []
    for factor, cells in table.items():
        cell = cells.get(app)
        if cell is None:
            continue
        lines.append(f"- {factor}: reconstruction kept {cell['kept']:.2f} of the readings (goal ≥ {UPLOAD_GOALS['kept']:g}): "
                     f"**{'met' if cell['kept'] >= UPLOAD_GOALS['kept'] else 'missed'}**")
        if factor in UPLOAD_GOALS:
            reached, clean = UPLOAD_GOALS[factor]
            met = cell["reached"] >= reached and cell["clean"] >= clean
            lines.append(f"- {factor}, {app}: reached {cell['reached']:.2f} (goal ≥ {reached:g}), clean {cell['clean']:.2f} "
                         f"(goal ≥ {clean:g}): **{'met' if met else 'missed'}**")
    return lines
