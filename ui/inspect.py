"""The Your image tab's handlers: an uploaded or generated image, its reconstruction, its most active latents and their maps over time."""

from dataclasses import dataclass, replace

from PIL import Image

from backend.errors import ExplorerError
from ui.explorer import Explorer
from ui.image_files import kept
from ui.images import upscale
from ui.state import MAX_SEED, parse_int
from ui.steer import check_prompt
from ui.timeline import Timeline, timelines
from ui.uploads import open_upload

TOP_LATENTS = 8
TOP_LABELS = 4  # label maps: each of the image's most active labels, its local latents' codes summed
HEADERS = ["latent", "label", "sum", "max", "kind"]


@dataclass
class Inspection:
    """An image's most active latents (rows of HEADERS) and, per latent, its maps over time; for an upload, the upload at the
    model's size and what its reconstruction is worth (`upload_note`)."""

    image: Image.Image
    rows: list[list]
    timelines: list[Timeline]
    upload: Image.Image | None = None
    note: str = ""

    def outputs(self) -> tuple:
        """Values for the image, the latent table, the gallery at the last step and the kept state."""
        return upscale(self.image), self.rows, gallery(self, len(self.timelines[0].frames) - 1 if self.timelines else 0), self

    def upload_outputs(self) -> tuple:
        """Values for the upload beside its reconstruction (none for a generated image) and the note under them."""
        return None if self.upload is None else upscale(self.upload), self.note


def read_upload(path, prompt) -> tuple[Image.Image, str]:
    """The uploaded file (checked by `open_upload`) and its optional prompt ("" when blank)."""
    image = open_upload(path)
    if prompt is not None and not isinstance(prompt, str):
        raise ExplorerError(f"The prompt must be text, got {type(prompt).__name__}.")
    return image, check_prompt(prompt) if prompt and prompt.strip() else ""


def upload_note(image: Image.Image, run) -> str:
    """What a run that reproduces `image` is worth: its PSNR, how the upload was resized, and a warning when it is far off."""
    lines = [f"**reconstruction PSNR {run.fidelity:.1f} dB** against your upload at the model's size"]
    (width, height), (model_width, model_height) = image.size, run.image.size
    if (width, height) != (model_width, model_height):
        aspect = "; its aspect ratio changed" if width * model_height != height * model_width else ""
        lines.append(f"Resized from {width} × {height} to {model_width} × {model_height} pixels, the model's size{aspect}.")
    if not run.faithful:
        lines.append("⚠️ **The reconstruction is far from your upload**: edits and steering start from the reconstruction, "
                     "not from your picture.")
    return "\n\n".join(lines)


def inspect_run(ex: Explorer, run, n: int = TOP_LATENTS) -> Inspection:
    """Rank latents by their summed code over positions and map the top `n` over time."""
    codes = run.codes.float().numpy()  # [P, n_latents]
    total, peak = codes.sum(0), codes.max(0)
    latents = [int(j) for j in total.argsort()[::-1][:n] if total[j] > 0]
    labels = [ex.table.labels[j] for j in latents]
    rows = [[j, label, round(float(total[j]), 3), round(float(peak[j]), 3), ex.table.kind(j)] for j, label in zip(latents, labels)]
    titles = [f"latent {j} {label}".strip() for j, label in zip(latents, labels)]
    groups = top_labels(ex, total)
    titles += [f"label {label}: {len(members)} latents summed" for label, members in groups]
    lines = timelines(ex.generator(), run, latents, titles, [members for _, members in groups]) if latents else []
    return Inspection(image=run.image, rows=rows, timelines=[line.as_files(ex.pictures) for line in lines])


def top_labels(ex: Explorer, total, n: int = TOP_LABELS) -> list[tuple[str, list[int]]]:
    """The image's `n` most active labels, by their local latents' summed code (`total` per latent), each with the latents
    that fired: one label's code is spread over several latents, so their sum maps the label (docs/LOCALIZATION.md)."""
    groups: dict[str, list[int]] = {}
    for j in map(int, total.nonzero()[0]):
        if ex.table.labels[j] and ex.table.kinds[j] != "global":
            groups.setdefault(ex.table.labels[j], []).append(j)
    ranked = sorted(groups.items(), key=lambda item: -sum(float(total[j]) for j in item[1]))
    return ranked[:n]


def inspect_upload(ex: Explorer, path, prompt: str = "") -> Inspection:
    """Latents of an uploaded image file, through the run that reproduces it (conditioned on `prompt` if given)."""
    image, prompt = read_upload(path, prompt)
    run = ex.generator().invert(image, prompt=prompt)
    return replace(inspect_run(ex, run), upload=image.resize(run.image.size, Image.BICUBIC), note=upload_note(image, run))


def inspect_prompt(ex: Explorer, prompt, seed) -> Inspection:
    """Latents of the image the model generates from `prompt` and `seed`."""
    prompt, seed = check_prompt(prompt), parse_int(seed, "Seed", 0, MAX_SEED)
    return inspect_run(ex, ex.generator().base(prompt, seed))


def gallery(inspection: Inspection | None, index) -> list[tuple[str, str]]:
    """Each top latent's map over the image at recorded step `index`, then each top label's."""
    if inspection is None:
        return []
    t = parse_int(index, "Step index", 0, max(len(inspection.timelines[0].frames) - 1, 0) if inspection.timelines else 0)
    return [(kept(line.frames[t][1]), line.title) for line in inspection.timelines]
