"""Latent pages as files: each page drawn once, then served as it was written (issue 27).

A page reads only the atlas, so it can be drawn before anyone asks: `predraw` draws every page in
a low-priority child process when the app starts, and `python -m ui.page_files --bundle …` ahead
of time (with `--maps`, each latent's map over time too: ui/map_files.py). A page is one JSON file (its text, tables and figures as plotly JSON) beside its
pictures, lossless WebP files named by their pixels' hash (shared by identical pictures). Opening a
page then reads a file; a page not drawn yet is drawn on demand and written the same way, so a
page served from the files is the page drawn on demand, byte for byte.

The folder is keyed by what a page depends on, the bundle's files, this app's code (ui/ and
backend/) and the versions of the libraries that encode figures and pictures: a changed bundle
or app draws anew instead of serving stale pages. Folders of other keys are left alone (another
bundle's app may be using them).
"""

import argparse
import functools
import hashlib
import importlib.metadata
import json
import logging
import multiprocessing
import os
from pathlib import Path

from gradio.components.plot import PlotData
from tqdm import tqdm

from backend.io import write_json
from backend.serving.bundle import Bundle
from ui.browse import LatentPage, draw_map, latent_id, latent_page
from ui.explorer import Explorer
from ui.image_files import LatentFiles, temporary_folder
from ui.map_files import MapFiles, draw_maps
from ui.views import default_order

log = logging.getLogger(__name__)

ROOT = Path(__file__).resolve().parents[1]
DRAWING_CODE = ("ui", "backend")  # the source that decides what a page shows
DRAWING_LIBRARIES = ("plotly", "gradio", "pillow")  # figures' JSON, PlotData, WebP files
CACHE_ENV = "SAE_PAGE_CACHE"  # where page folders go (default ~/.cache/sae-explorer/pages)
PREDRAW_ENV = "SAE_PAGE_PREDRAW"  # "0": draw pages only when asked (as before issue 27)
GALLERIES = ("icons", "top_images", "top_patches", "quantile_images")
FIGURES = ("histogram", "profile")


def pages_key(manifest_files: dict[str, str], code_root: Path = ROOT) -> str:
    """A digest of what pages depend on: the bundle's file digests, the app's source and the drawing libraries' versions."""
    digest = hashlib.sha256(json.dumps(manifest_files, sort_keys=True).encode())
    for folder in DRAWING_CODE:
        for source in sorted((code_root / folder).rglob("*.py")):
            digest.update(source.relative_to(code_root).as_posix().encode() + source.read_bytes())
    for library in DRAWING_LIBRARIES:
        digest.update(f"{library} {importlib.metadata.version(library)}".encode())
    return digest.hexdigest()[:24]


def cache_root() -> Path:
    """Where page folders go: $SAE_PAGE_CACHE, else the user's cache."""
    return Path(os.environ.get(CACHE_ENV) or Path.home() / ".cache" / "sae-explorer" / "pages")


class PageFiles(LatentFiles):
    """One bundle's latent pages as files under `root`: `<j>.json` per page, pictures under `images/`."""

    @classmethod
    def of(cls, bundle: Bundle, parent: Path | None = None) -> "PageFiles":
        """The page folder of this bundle and this app's code, under `parent` (default `cache_root()`); a temporary one
        when that cannot be written (pages are then drawn again on the next start)."""
        key = pages_key(bundle.manifest["files"])
        try:
            return cls(Path(parent or cache_root()) / key)
        except OSError as err:
            log.warning("latent pages go to a temporary folder: %s", err)
            return cls(temporary_folder("pages") / key)

    def write(self, page: LatentPage) -> LatentPage:
        """Write a drawn page (pictures first, its JSON last and atomically, so a page file is never half there); the page
        as it is served from now on."""
        record = {"latent": page.latent, "header": page.header, "icon_note": page.icon_note, "similar": page.similar}
        for name in GALLERIES:
            record[name] = [[Path(path).name, caption] for path, caption in self.images.gallery(getattr(page, name))]
        for name in FIGURES:
            record[name] = getattr(page, name).to_json()
        write_json(self.path(page.latent), record)
        return self.read(page.latent)

    def read(self, j: int) -> LatentPage | None:
        """Page j as written, or None when it has not been drawn yet."""
        record = self.record(j)
        if record is None:
            return None
        galleries = {name: [(str(self.images.root / file), caption) for file, caption in record[name]] for name in GALLERIES}
        figures = {name: PlotData(type="plotly", plot=record[name]) for name in FIGURES}
        return LatentPage(latent=record["latent"], header=record["header"], icon_note=record["icon_note"],
                          similar=record["similar"], **galleries, **figures)

    def page(self, ex: Explorer, j: int) -> LatentPage:
        """Page j from its file, drawn and written first if it has none."""
        return self.read(j) or self.write(latent_page(ex, j))


def served_page(ex: Explorer, value, files: PageFiles) -> LatentPage:
    """Latent page as the app serves it: from its file (drawn and written first if it has none), kept in memory for the
    pages opened last."""
    j = latent_id(ex, value)
    return ex.pages.get(j, lambda: files.page(ex, j))


def draw_all(ex: Explorer, files: PageFiles, progress: bool = True) -> int:
    """Draw every page not written yet, in the app's default order (the pages visitors open first, first); how many."""
    todo = files.missing(default_order(ex))
    for j in tqdm(todo, desc="latent pages", unit="page", disable=not progress):
        files.page(ex, j)
    return len(todo)


def _predraw(bundle_root: str, root: str) -> None:
    """Child process: draw the pages at low priority, so visitors' requests come first."""
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s [latent pages] %(message)s")
    from backend.serving.batching import NICENESS  # here, not at the top: the server's process imports diffusers only with a model

    os.nice(NICENESS)
    ex = Explorer(Bundle.load(bundle_root))
    drawn = draw_all(ex, PageFiles(Path(root)), progress=False)
    log.info("drew %d latent pages into %s", drawn, root)


def predraw(ex: Explorer, files: PageFiles) -> multiprocessing.Process | None:
    """Start drawing the pages not written yet in a child process (None when all are, or when PREDRAW_ENV is '0')."""
    if os.environ.get(PREDRAW_ENV) == "0" or not files.missing(default_order(ex)):
        return None
    process = multiprocessing.get_context("spawn").Process(target=_predraw, args=(str(ex.bundle.root), str(files.root)),
                                                           name="latent-pages", daemon=True)
    process.start()
    return process


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description="Draw a bundle's latent pages ahead of time, into the folder the app serves them from.")
    parser.add_argument("--bundle", default="checkpoints/shapes-bundle", help="bundle directory or hub repo id")
    parser.add_argument("--cache", default=None, help=f"parent folder of page folders (default: ${CACHE_ENV}, else {cache_root()})")
    parser.add_argument("--maps", action="store_true", help="also each latent's map over time, with the bundle's own model "
                                                             "(what the app's model worker draws while idle)")
    args = parser.parse_args(argv)
    ex = Explorer(Bundle.load(args.bundle))
    files = PageFiles.of(ex.bundle, Path(args.cache) if args.cache else None)
    drawn = draw_all(ex, files)
    print(f"{drawn} pages drawn; {ex.bundle.n_latents - drawn} were already there · {files.root}")
    if args.maps:
        ex.load_model()
        ex.maps = MapFiles.of(files.root, ex.bundle, None)
        drawn = draw_maps(ex.maps, functools.partial(draw_map, ex), ex.maps.missing(default_order(ex)), progress=True)
        print(f"{drawn} maps over time drawn · {ex.maps.root}" + (f" ({ex.notice})" if ex.notice else ""))


if __name__ == "__main__":
    main()
