"""The Browse tab's handlers: search the latent list and build a latent's page from the atlas (no model calls)."""

from dataclasses import dataclass

import plotly.graph_objects as go
from gradio.components.plot import PlotData
from PIL import Image

from backend.errors import ExplorerError
from backend.serving.bundle import label_text
from ui.explorer import Explorer
from ui.icons import HEADER as ICONS_HEADER
from ui.icons import IconCells, icon_gallery
from ui.images import mark_patch, overlay, upscale
from ui.latents import DEFAULT_SORT, HEADERS, list_latents
from ui.plots import histogram_figure, latent_map_figure, profile_figure
from ui.state import parse_int
from ui.timeline import Timeline, frame, timelines

TOP_N = 8
QUANTILE_BINS, PER_BIN = 4, 2
SIMILAR_N = 8
SIMILAR_HEADERS = ["latent", "label", "cosine"]
COLUMN_WIDTHS = {"latent": "7%", ICONS_HEADER: "14%", "label": "14%", "effect": "16%", "freq.": "8%", "max": "7%", "purity": "8%",
                 "precision": "9%", "peak": "7%", "kind": "10%"}  # of the latent table (without icons the columns share the rest)


def search(ex: Explorer, query: str = "", sort: str = DEFAULT_SORT, labelled_only: bool = False,
           min_frequency: float = 0.0) -> tuple[list[list], str]:
    """The latent list for the search box, sort menu and filters."""
    return list_latents(ex.bundle, ex.table, query, sort, labelled_only, min_frequency)


def table(ex: Explorer, icon_cells: IconCells, query: str = "", sort: str = DEFAULT_SORT, labelled_only: bool = False,
          min_frequency: float = 0.0) -> tuple[list[list], str]:
    """The latent list as the app's table shows it: `search`'s rows, each with its latent's icon strip after the id."""
    rows, summary = search(ex, query, sort, labelled_only, min_frequency)
    return icon_cells.rows(rows), summary


def table_headers(ex: Explorer) -> list[str]:
    """Column names of the app's latent table (the icon column only when the bundle has icons)."""
    return HEADERS[:1] + [ICONS_HEADER] + HEADERS[1:] if ex.icons is not None else HEADERS


def latent_id(ex: Explorer, value) -> int:
    """A latent id from a number box, a table cell or a URL, checked against the bundle."""
    return ex.bundle.check_latent(parse_int(value, "Latent id", -(10**9), 10**9))


@dataclass
class LatentPage:
    """Everything the Browse tab shows for one latent."""

    latent: int
    header: str  # markdown
    icons: list[tuple[Image.Image | str, str]]  # the unsteered image, then the latent added at each strength
    icon_note: str  # markdown: how the icons were drawn, or why there are none
    top_images: list[tuple[Image.Image | str, str]]  # (picture or its file, caption)
    top_patches: list[tuple[Image.Image | str, str]]
    quantile_images: list[tuple[Image.Image | str, str]]  # weakest quarter first
    histogram: go.Figure | PlotData  # PlotData: the figure as written to a page file (ui/page_files.py)
    profile: go.Figure | PlotData
    similar: list[list]  # rows of SIMILAR_HEADERS

    def outputs(self) -> tuple:
        """The page as the tuple of values the Gradio outputs take, in field order."""
        return (self.latent, self.header, self.icons, self.icon_note, self.top_images, self.top_patches, self.quantile_images,
                self.histogram, self.profile, self.similar)


def header(ex: Explorer, j: int) -> str:
    """Markdown title and stats line of latent j."""
    atlas, table = ex.bundle.atlas, ex.table
    label = label_text(ex.bundle.labels[j]) or "no label (no factor is enriched among its top images)"
    where = {"global": f"a global latent: one code per image, the same at every position, so it has no map · fires on {table.frequency[j]:.2%} of images",
             "image-wide": f"**image-wide**: fires on {table.spread[j]:.0%} of the positions of each image it fires on (more than a quarter), "
                           f"on {table.image_share[j]:.0%} of the atlas images: it marks images more than places · fires at {table.frequency[j]:.2%} of positions",
             "local": f"fires at {table.frequency[j]:.2%} of positions: {table.spread[j]:.0%} of each image it fires on, "
                      f"on {table.image_share[j]:.0%} of the atlas images"}[table.kinds[j]]
    stats = (f"{where} · mean {float(atlas['mean'][j]):.3g} · "
             f"max {table.max_activation[j]:.3g} · typical activation s = {float(atlas['typical'][j]):.3g} · "
             f"peaks at step {table.peak_step[j]} (relative to the activation scale) · "
             f"{float(ex.bundle.temporal_profiles.residual_share[j]):.0%} of its trajectory injected as residual")
    if j in table.signed_pairs:
        other, cosine = table.signed_pairs[j]
        stats += (f"\n\n**One side of a signed pair** with latent {other}: their decoder directions point opposite ways "
                  f"(cosine {cosine:.2f}), so the two code one signed direction, each firing where it has its sign, and one of "
                  "them fires on more than a quarter of each image: read them together, as a dense component of the "
                  "activations, not as a feature of a place or a concept.")
    if table.max_activation[j] <= 0:
        stats = "never fired on the atlas images (a dead latent)"
    return f"## Latent {j}\n**{label}**{precision_line(ex, j)}{effect_line(ex, j)}\n\n{stats}"


def precision_line(ex: Explorer, j: int) -> str:
    """' · precision …': how much of latent j's activation over all atlas images is on images with its label's value."""
    label = ex.bundle.labels[j]
    if not label.get("factor"):
        return ""
    return (f" · precision {ex.table.precision[j]:.2f}: of its activation over all atlas images, the share on images whose "
            f"{label['factor']} is {label['value']} (the purity reads its top {label.get('support', 16)} images)")


def effect_line(ex: Explorer, j: int) -> str:
    """' · adding it shows …': latent j's effect label and whether it agrees with its label ('' without effect labels)."""
    effect, agreed = ex.table.effects[j], ex.table.agreement[j]
    if not effect:
        return ""
    verdict = {False: " — not its label's value: the label says where it fires, the effect what adding it does",
               True: " — its label's value", None: ""}[agreed]
    return f" · adding it to the icons' neutral image (α = {ex.bundle.manifest['effects']['strength']:g}) shows **{effect}**{verdict}"


def quantile_name(b: int) -> str:
    """"q 25–50 %": which share of the latent's firing images, weakest first, bin b stands for."""
    width = 100 // QUANTILE_BINS
    return f"q {b * width}–{(b + 1) * width} %"


def latent_page(ex: Explorer, value, n: int = TOP_N) -> LatentPage:
    """Latent page: feature icons, top images with maps, top patches, examples by quantile, histogram, temporal profile,
    similar latents."""
    bundle = ex.bundle
    j = latent_id(ex, value)
    vmax = float(ex.table.max_activation[j])
    tops = bundle.top_images(j, n)
    local = ex.table.kinds[j] != "global"  # a global latent's code is the same everywhere: no map, no patch
    maps = bundle.top_image_maps(j, n).numpy()
    top_images = [(overlay(bundle.thumbnails[i], maps[rank], vmax) if local else upscale(bundle.thumbnails[i]),
                   f"image {i} · {score:.2f} · {bundle.images[i]['prompt']}") for rank, (i, score) in enumerate(tops)]
    grid = tuple(bundle.manifest["shapes"]["grid"])
    top_patches = [(mark_patch(bundle.thumbnails[i], r, c, grid), f"image {i} ({r}, {c}) · {score:.2f}")
                   for i, r, c, score in (bundle.top_patches(j, n) if local else [])]
    quantile_images = [(upscale(bundle.thumbnails[i]), f"{quantile_name(b)} · image {i} · {score:.2f}")
                       for b, i, score in bundle.quantile_images(j, QUANTILE_BINS, PER_BIN)]
    similar = [[int(k), ex.table.labels[k], round(cos, 3)] for k, cos in bundle.similar_latents(j, SIMILAR_N)]
    profiles = bundle.temporal_profiles
    icons, icon_note = icon_gallery(ex, j)
    return LatentPage(
        latent=j, header=header(ex, j), icons=icons, icon_note=icon_note, top_images=top_images, top_patches=top_patches,
        quantile_images=quantile_images,
        histogram=histogram_figure(bundle.atlas["histogram"][j].numpy(), vmax),
        profile=profile_figure(profiles.trajectory[j].numpy(), profiles.injected[j].numpy(), float(profiles.residual_share[j]),
                               float(bundle.typical_activation[j]), ex.recorded_steps),
        similar=similar,
    )


def latent_map(ex: Explorer):
    """The map of all latents as a figure (hover: id, label, frequency; colour: label factor), or why there is none."""
    try:
        xy = ex.bundle.latent_map.numpy()
    except ExplorerError as err:
        return None, str(err)
    table = ex.table
    groups = [label.get("factor") or "unlabelled" for label in ex.bundle.labels]
    hover = [f"latent {j} · {table.labels[j] or 'no label'} · {table.kinds[j]} · fires at {table.frequency[j]:.2%}" for j in range(len(groups))]
    return latent_map_figure(xy, groups, hover, table.frequency), "Hover a point for its latent; click it to open its page."


def top_image_of(ex: Explorer, value) -> tuple[str, int]:
    """Prompt and seed of latent j's most activating atlas image (the default for steering and maps over time)."""
    j = latent_id(ex, value)
    tops = ex.bundle.top_images(j, 1)
    info = ex.bundle.images[tops[0][0] if tops else 0]
    return info["prompt"], int(info["seed"])


def latent_timeline(ex: Explorer, value) -> Timeline:
    """Latent j's top atlas image regenerated and the latent mapped over its denoising steps (cached per latent and image)."""
    j = latent_id(ex, value)
    prompt, seed = top_image_of(ex, j)

    def compute() -> Timeline:
        generator = ex.generator()
        return timelines(generator, generator.base(prompt, seed), [j], [map_title(j, prompt, seed)])[0]

    return ex.timelines.get((j, prompt, seed), compute)


def map_title(j: int, prompt: str, seed: int) -> str:
    return f"Latent {j} on “{prompt}” (seed {seed})"


def draw_map(ex: Explorer, j: int) -> None:
    """Write latent j's map over time (none for a global latent), keeping neither its base run nor its frames in memory:
    drawing ahead leaves the caches to visitors."""
    if ex.table.kinds[j] == "global" or ex.maps.read(j) is not None:
        return
    prompt, seed = top_image_of(ex, j)
    generator = ex.generator()
    ex.maps.write(timelines(generator, generator.base(prompt, seed, keep=False), [j], [map_title(j, prompt, seed)])[0])


def timeline_files(ex: Explorer, j: int) -> Timeline:
    """Latent j's map over time as picture files: read when it was drawn before, else drawn now (and written, when the
    maps of this bundle's model are kept: ui/map_files.py)."""
    line = ex.maps.read(j) if ex.maps else None
    if line is None:
        line = latent_timeline(ex, j)
        line = ex.maps.write(line) if ex.maps else line.as_files(ex.pictures)
    return line


def timeline_outputs(line: Timeline) -> tuple:
    """Timeline state, slider position (the last step), the two frame images and a caption."""
    last = len(line.frames) - 1
    return (line, last, *frame(line, last))


def timeline_view(ex: Explorer, value) -> tuple:
    """Timeline state, slider position (the last step), the two frame images and a caption; a notice without a model."""
    if ex.model_state == "off":
        return no_timeline(ex.notice)
    j = latent_id(ex, value)
    if ex.table.kinds[j] == "global":
        return no_timeline(f"Latent {j} is global: one code per image, the same at every position, so it has no map over time.")
    return timeline_outputs(timeline_files(ex, j))


def no_timeline(caption: str) -> tuple:
    """`timeline_view`'s outputs without a map: no state, the slider at 0, no frames, and `caption` saying why."""
    return None, 0, None, None, caption


def drawn_timeline_view(ex: Explorer, value) -> tuple | None:
    """`timeline_view` from the map's file, without the model; None when the map has not been drawn yet."""
    line = ex.maps.read(latent_id(ex, value)) if ex.maps else None
    return None if line is None else timeline_outputs(line)
