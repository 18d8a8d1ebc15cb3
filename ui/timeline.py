"""Maps over denoising time: a latent's prefix-encoded map at each recorded step, over x0_t and the final image."""

from dataclasses import dataclass, replace

from PIL import Image

from backend.errors import ExplorerError
from ui.image_files import ImageFiles, kept
from ui.images import overlay


@dataclass
class Timeline:
    """Frames of one latent (or of a label's latents, their codes summed: `latent` None) on one image: per recorded step,
    (map over x0_t, map over the final image)."""

    latent: int | None
    steps: list[int]  # sampler step of each frame
    frames: list[tuple[Image.Image | str, Image.Image | str]]  # pictures, or their files (`as_files`)
    title: str

    def as_files(self, files: ImageFiles) -> "Timeline":
        """This timeline with its frames as picture files: what a visitor's session keeps (paths, not 40 pictures)."""
        return replace(self, frames=[(files.path(x0), files.path(final)) for x0, final in self.frames])


def timelines(generator, run, latents: list[int], titles: list[str], groups: list[list[int]] = ()) -> list[Timeline]:
    """Each latent's maps over time on `run`, then each group's (its latents' codes summed: the map a label draws), each
    coloured on its own scale (its maximum over all steps); `titles` name the latents, then the groups."""
    members = sorted({*latents, *(j for group in groups for j in group)})
    maps = generator.maps_over_time(run, members).numpy()  # [L, T, H, W]
    row = {j: i for i, j in enumerate(members)}
    lines = [maps[row[j]] for j in latents] + [maps[[row[j] for j in group]].sum(0) for group in groups]
    steps = list(generator.recorded_steps)
    x0 = generator.x0_images(run) if run.result.x0_predictions is not None else [run.image] * len(steps)
    final = run.image
    return [Timeline(latent=j, steps=steps, title=title,
                     frames=[(overlay(x0[t], m[t], float(m.max())), overlay(final, m[t], float(m.max()))) for t in range(len(steps))])
            for j, m, title in zip([*latents, *[None] * len(groups)], lines, titles)]


def frame(line: Timeline | None, index) -> tuple[Image.Image | None, Image.Image | None, str]:
    """The frame at slider position `index`: map over x0_t, map over the final image, and a caption."""
    if line is None:
        return None, None, "Maps over time appear here once the model has regenerated the image."
    if not isinstance(index, int | float) or not 0 <= index < len(line.frames):
        raise ExplorerError(f"Step index must be between 0 and {len(line.frames) - 1}, got {index!r}.")
    t = int(index)
    x0, final = line.frames[t]
    return kept(x0), kept(final), f"{line.title} · recorded step {t + 1}/{len(line.frames)} (sampler step {line.steps[t]})"


def next_index(line: Timeline | None, index) -> int:
    """The slider position after `index`, wrapping around (the play button's tick)."""
    if line is None or not line.frames:
        return 0
    return (int(index or 0) + 1) % len(line.frames)
