"""Uploaded images: size, pixel and format limits checked from the file's header, before anything is decoded.

The upload widget is a `gr.File` restricted to FILE_TYPES, so Gradio hands over a path without
decoding anything itself (gr.Image would decode first, and its errors are a bare "Error").
"""

from pathlib import Path

from PIL import Image, UnidentifiedImageError

from backend.errors import ExplorerError

MAX_UPLOAD_BYTES = 16 * 2**20  # Gradio refuses larger uploads (launch's max_file_size)
MAX_PIXELS = 4096 * 4096  # a 10000 x 10000 PNG is 292 kB on disk and 400 MB decoded
FORMATS = ("PNG", "JPEG", "WEBP", "GIF", "BMP")  # JPEG's decoder also opens the multi-picture JPEGs (MPO) phones write
FILE_TYPES = [".png", ".jpg", ".jpeg", ".webp", ".gif", ".bmp"]
NOT_AN_IMAGE = f"The upload is not an image this app can read; use {', '.join(FORMATS[:-1])} or {FORMATS[-1]}."


def open_upload(path) -> Image.Image:
    """The uploaded file as an RGB image, refusing other formats and oversized images before decoding them."""
    if not path:
        raise ExplorerError("Upload an image first.")
    if not isinstance(path, str | Path):
        raise ExplorerError(NOT_AN_IMAGE)
    try:
        with Image.open(path, formats=FORMATS) as image:  # no other decoder is ever tried
            width, height = image.size
            if width * height > MAX_PIXELS:
                raise ExplorerError(f"The image is {width} × {height} pixels; the largest this app reads is {MAX_PIXELS:,} pixels "
                                    f"(e.g. 4096 × 4096). Scale it down first.")
            return image.convert("RGB")
    except ExplorerError:
        raise
    except Image.DecompressionBombError:  # PIL's own header check, at twice its default limit
        raise ExplorerError(f"The image has far more than {MAX_PIXELS:,} pixels, the most this app reads; scale it down first.") from None
    except (OSError, UnidentifiedImageError, ValueError, SyntaxError):  # truncated or malformed data
        raise ExplorerError(NOT_AN_IMAGE) from None
