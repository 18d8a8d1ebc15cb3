"""The Inspect tab's handlers: an uploaded or generated image, its most active latents and their maps over time."""

from dataclasses import dataclass

from PIL import Image

from ui.explorer import Explorer
from ui.images import upscale
from ui.state import MAX_SEED, parse_int
from ui.steer import check_prompt
from ui.timeline import Timeline, timelines
from ui.uploads import open_upload

TOP_LATENTS = 8
HEADERS = ["latent", "label", "sum", "max"]


@dataclass
class Inspection:
    """An image's most active latents (rows of HEADERS) and, per latent, its maps over time."""

    image: Image.Image
    rows: list[list]
    timelines: list[Timeline]

    def outputs(self) -> tuple:
        """Values for the image, the latent table, the gallery at the last step and the kept state."""
        return upscale(self.image), self.rows, gallery(self, len(self.timelines[0].frames) - 1 if self.timelines else 0), self


def inspect_run(ex: Explorer, run, n: int = TOP_LATENTS) -> Inspection:
    """Rank latents by their summed code over positions and map the top `n` over time."""
    codes = run.codes.float().numpy()  # [P, n_latents]
    total, peak = codes.sum(0), codes.max(0)
    latents = [int(j) for j in total.argsort()[::-1][:n] if total[j] > 0]
    labels = [ex.table.labels[j] for j in latents]
    rows = [[j, label, round(float(total[j]), 3), round(float(peak[j]), 3)] for j, label in zip(latents, labels)]
    titles = [f"latent {j} {label}".strip() for j, label in zip(latents, labels)]
    lines = timelines(ex.generator(), run, latents, titles) if latents else []
    return Inspection(image=run.image, rows=rows, timelines=lines)


def inspect_upload(ex: Explorer, path, prompt: str = "") -> Inspection:
    """Latents of an uploaded image file, noised forward to each recorded step (conditioned on `prompt` if given)."""
    image = open_upload(path)
    prompt = check_prompt(prompt) if isinstance(prompt, str) and prompt.strip() else ""
    return inspect_run(ex, ex.generator().invert(image, prompt=prompt))


def inspect_prompt(ex: Explorer, prompt, seed) -> Inspection:
    """Latents of the image the model generates from `prompt` and `seed`."""
    prompt, seed = check_prompt(prompt), parse_int(seed, "Seed", 0, MAX_SEED)
    return inspect_run(ex, ex.generator().base(prompt, seed))


def gallery(inspection: Inspection | None, index) -> list[tuple[Image.Image, str]]:
    """Each top latent's map over the image at recorded step `index`."""
    if inspection is None:
        return []
    t = parse_int(index, "Step index", 0, max(len(inspection.timelines[0].frames) - 1, 0) if inspection.timelines else 0)
    return [(line.frames[t][1], line.title) for line in inspection.timelines]
