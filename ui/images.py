"""Pictures for the UI: upscaled thumbnails, activation maps drawn over images, differences (numpy + PIL only)."""

import numpy as np
from PIL import Image, ImageDraw

DISPLAY_SIZE = 192  # tiny atlas images (32x32) are blown up to about this many pixels, nearest-neighbour


def to_pil(image) -> Image.Image:
    """A PIL RGB image from a PIL image or a uint8 array [h, w, 3] (tensors pass through `.numpy()`)."""
    if isinstance(image, Image.Image):
        return image.convert("RGB")
    array = image.numpy() if hasattr(image, "numpy") else np.asarray(image)
    return Image.fromarray(np.ascontiguousarray(array, dtype=np.uint8), "RGB")


def upscale(image, size: int = DISPLAY_SIZE) -> Image.Image:
    """`image` enlarged by a whole factor to at least `size` pixels wide, keeping its pixels sharp."""
    image = to_pil(image)
    factor = max(1, -(-size // image.width))
    return image.resize((image.width * factor, image.height * factor), Image.NEAREST) if factor > 1 else image


def as_array(values) -> np.ndarray:
    """A float32 numpy array from a numpy array, a nested list or a tensor (through `.numpy()`)."""
    return np.asarray(values.numpy() if hasattr(values, "numpy") else values, dtype=np.float32)


def heat_colours(values: np.ndarray) -> np.ndarray:
    """A black-red-yellow-white colour ramp for values in [0, 1]: float array [..., 3]."""
    v = np.clip(values, 0.0, 1.0)[..., None]
    return np.clip(np.concatenate([3 * v, 3 * v - 1, 3 * v - 2], axis=-1), 0.0, 1.0)


def overlay(image, heatmap, vmax: float | None = None, size: int = DISPLAY_SIZE) -> Image.Image:
    """`image` upscaled, with `heatmap` [H, W] (activations, ≥ 0) drawn over it, opaque where strongest."""
    base = upscale(image, size)
    heat = as_array(heatmap)
    top = float(vmax) if vmax else float(heat.max())
    norm = heat / top if top > 0 else np.zeros_like(heat)
    norm_img = Image.fromarray(np.clip(norm * 255, 0, 255).astype(np.uint8), "L").resize(base.size, Image.BILINEAR)
    level = np.asarray(norm_img, dtype=np.float32)[..., None] / 255.0
    alpha = 0.75 * np.sqrt(level)
    mixed = (1 - alpha) * np.asarray(base, dtype=np.float32) / 255.0 + alpha * heat_colours(level[..., 0])
    return Image.fromarray((mixed * 255).round().astype(np.uint8), "RGB")


def tint(image, weights, colour=(0, 255, 255), size: int = DISPLAY_SIZE) -> Image.Image:
    """`image` upscaled, its grid cells tinted `colour` by `weights` [H, W] in [0, 1] and the rest dimmed (the cells stay sharp)."""
    base = upscale(image, size)
    cells = Image.fromarray((np.clip(as_array(weights), 0, 1) * 255).round().astype(np.uint8), "L").resize(base.size, Image.NEAREST)
    level = np.asarray(cells, dtype=np.float32)[..., None] / 255.0
    pixels = np.asarray(base, dtype=np.float32) * (0.45 + 0.55 * level)  # outside the cells: dimmed, to make them stand out
    mixed = (1 - 0.5 * level) * pixels + 0.5 * level * np.asarray(colour, dtype=np.float32)
    return Image.fromarray(mixed.round().astype(np.uint8), "RGB")


def mark_patch(image, row: int, col: int, grid: tuple[int, int], size: int = DISPLAY_SIZE) -> Image.Image:
    """`image` upscaled, with the grid cell (row, col) outlined."""
    base = upscale(image, size)
    cell_h, cell_w = base.height / grid[0], base.width / grid[1]
    box = (col * cell_w, row * cell_h, (col + 1) * cell_w - 1, (row + 1) * cell_h - 1)
    width = max(2, base.width // 64)
    draw = ImageDraw.Draw(base)
    draw.rectangle(box, outline=(0, 0, 0), width=2 * width)  # a dark rim keeps the outline visible on any image
    draw.rectangle(box, outline=(0, 255, 255), width=width)
    return base


def difference(a, b, gain: float = 4.0, size: int = DISPLAY_SIZE) -> Image.Image:
    """Per-pixel |a − b| times `gain`, so that small changes show."""
    x, y = (np.asarray(to_pil(im), dtype=np.float32) for im in (a, b))
    diff = np.clip(np.abs(x - y) * gain, 0, 255)
    return upscale(Image.fromarray(diff.astype(np.uint8), "RGB"), size)
