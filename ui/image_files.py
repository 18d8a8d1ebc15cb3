"""Pictures served as image files written once: a page (ui/page_files.py) or table cell encodes and copies nothing again.

Gradio saves every PIL image an event returns to its cache (encoding and hashing it each time).
Files in a static path are served as they are, so pictures are written here once, named by a
hash of their pixels, and handed to Gradio as paths. Lossless WebP at its fastest
setting: 0.5 ms a picture and smaller than PNG, which takes 1.4 ms (192 px demo pictures).
"""

import atexit
import hashlib
import json
import os
import shutil
import tempfile
import threading
from collections import OrderedDict
from pathlib import Path

import gradio as gr
from PIL import Image

from backend.errors import ExplorerError

RESULTS_KEPT = 8192  # pictures of model results kept on disk (a map over time is 40, a steer 3); the least recently written go first
DROPPED = "This picture is no longer kept on the server (newer results took its place); run it again to see it."


def temporary_folder(purpose: str) -> Path:
    """A fresh folder for files the app serves, removed when the process exits."""
    root = Path(tempfile.mkdtemp(prefix=f"sae-explorer-{purpose}-"))
    atexit.register(shutil.rmtree, root, ignore_errors=True)
    return root


class ImageFiles:
    """A folder of lossless WebP files by pixel hash, served by Gradio as static files; the least recently used dropped beyond
    `max_files` (None: every file kept, and a file already in the folder, written by this or another process, not written again)."""

    def __init__(self, root: Path, max_files: int | None):
        self.root, self.max_files = Path(root), max_files
        self.root.mkdir(parents=True, exist_ok=True)
        gr.set_static_paths([self.root])
        self._files: OrderedDict[str, Path] = OrderedDict()  # most recently used last
        if max_files is not None:  # files an earlier process left here (a model worker that was restarted) count too
            for file in sorted(self.root.glob("*.webp"), key=lambda f: f.stat().st_mtime):
                self._files[file.stem] = file
        self._lock = threading.Lock()

    def path(self, image: Image.Image) -> str:
        """The file holding `image`, written now (atomically) unless an identical picture already was."""
        digest = hashlib.blake2b(f"{image.mode} {image.size}".encode() + image.tobytes(), digest_size=16).hexdigest()
        with self._lock:
            if digest in self._files and self._files[digest].is_file():  # (a file removed behind our back is written again)
                self._files.move_to_end(digest)
                return str(self._files[digest])
        file = self.root / f"{digest}.webp"
        if self.max_files is None and file.exists():
            return str(file)
        partial = file.with_suffix(f".{os.getpid()}-{threading.get_ident()}.part")  # other processes write here too (page_files)
        image.save(partial, format="WEBP", lossless=True, method=0)
        os.replace(partial, file)
        with self._lock:
            self._files[digest] = file
            while self.max_files is not None and len(self._files) > self.max_files:
                _, dropped = self._files.popitem(last=False)
                dropped.unlink(missing_ok=True)
        return str(file)

    def gallery(self, items: list[tuple[Image.Image, str]]) -> list[tuple[str, str]]:
        """A gallery's (picture, caption) pairs with each picture as its file."""
        return [(self.path(image), caption) for image, caption in items]

    def __len__(self) -> int:
        with self._lock:
            return len(self._files)


class LatentFiles:
    """A folder of one record per latent, `<j>.json` (written last and atomically: a latent is done once it is there), beside
    the records' pictures under `images/`, every file kept: latent pages (page_files.py) and maps over time (map_files.py)."""

    def __init__(self, root: Path):
        self.root = Path(root)
        self.images = ImageFiles(self.root / "images", max_files=None)

    def path(self, j: int) -> Path:
        """Latent j's record (its pictures are under `images/`)."""
        return self.root / f"{j}.json"

    def record(self, j: int) -> dict | None:
        """Latent j's record as written, or None when it has not been written yet."""
        try:
            return json.loads(self.path(j).read_text())
        except FileNotFoundError:
            return None

    def missing(self, order: list[int]) -> list[int]:
        """The latents of `order` with no record yet, in that order."""
        return [j for j in order if not self.path(j).exists()]


def kept(path):
    """A picture a session kept (a file path, or an image), or a clear error once its file was dropped to make room."""
    if isinstance(path, str) and not Path(path).is_file():
        raise ExplorerError(DROPPED)
    return path
