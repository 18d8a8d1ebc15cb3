"""Pictures served as image files written once: a reopened latent page encodes and copies nothing.

Gradio saves every PIL image an event returns to its cache (encoding and hashing it each time).
Files in a static path are served as they are, so the pages' pictures are written here once,
named by a hash of their pixels, and handed to Gradio as paths. Lossless WebP at its fastest
setting: 0.5 ms a picture and smaller than PNG, which takes 1.4 ms (192 px demo pictures).
"""

import atexit
import hashlib
import os
import shutil
import tempfile
import threading
from collections import OrderedDict
from pathlib import Path

import gradio as gr
from PIL import Image

MAX_FILES = 4608  # about 20-45 MB of pictures: more than the kept pages show (ui/explorer.PAGES x (24 + up to 9 icons)), so theirs stay


def temporary_folder(purpose: str) -> Path:
    """A fresh folder for files the app serves, removed when the process exits."""
    root = Path(tempfile.mkdtemp(prefix=f"sae-explorer-{purpose}-"))
    atexit.register(shutil.rmtree, root, ignore_errors=True)
    return root


class ImageFiles:
    """A folder of lossless WebP files by pixel hash, served by Gradio as static files; the least recently used dropped beyond `max_files`."""

    def __init__(self, root: Path, max_files: int = MAX_FILES):
        self.root, self.max_files = Path(root), max_files
        self.root.mkdir(parents=True, exist_ok=True)
        gr.set_static_paths([self.root])
        self._files: OrderedDict[str, Path] = OrderedDict()  # most recently used last
        self._lock = threading.Lock()

    @classmethod
    def temporary(cls, max_files: int = MAX_FILES) -> "ImageFiles":
        """A store in a fresh temporary folder, removed when the process exits."""
        return cls(temporary_folder("images"), max_files)

    def path(self, image: Image.Image) -> str:
        """The file holding `image`, written now (atomically) unless an identical picture already was."""
        digest = hashlib.blake2b(f"{image.mode} {image.size}".encode() + image.tobytes(), digest_size=16).hexdigest()
        with self._lock:
            if digest in self._files:
                self._files.move_to_end(digest)
                return str(self._files[digest])
        file = self.root / f"{digest}.webp"
        partial = file.with_suffix(f".{threading.get_ident()}.part")
        image.save(partial, format="WEBP", lossless=True, method=0)
        os.replace(partial, file)
        with self._lock:
            self._files[digest] = file
            while len(self._files) > self.max_files:
                _, dropped = self._files.popitem(last=False)
                dropped.unlink(missing_ok=True)
        return str(file)

    def touch(self, paths: list[str]) -> None:
        """Mark these files as just used, so the least-recently-used rule keeps them longest."""
        with self._lock:
            for path in paths:
                digest = Path(path).stem
                if digest in self._files:
                    self._files.move_to_end(digest)

    def gallery(self, items: list[tuple[Image.Image, str]]) -> list[tuple[str, str]]:
        """A gallery's (picture, caption) pairs with each picture as its file."""
        return [(self.path(image), caption) for image, caption in items]

    def __len__(self) -> int:
        with self._lock:
            return len(self._files)
