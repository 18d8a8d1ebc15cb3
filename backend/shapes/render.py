"""The shapes world: factors, their sampling, and a deterministic antialiased renderer."""

import math
from dataclasses import asdict, dataclass

import numpy as np
from PIL import Image, ImageDraw

SHAPES = ("circle", "square", "triangle", "star", "ring", "cross")
COLOURS = {  # well separated in RGB, all bright enough to stand out on every background
    "red": (230, 30, 30),
    "green": (40, 200, 50),
    "blue": (40, 80, 255),
    "yellow": (245, 230, 30),
    "purple": (190, 50, 230),
    "cyan": (30, 220, 230),
    "orange": (255, 140, 0),
    "white": (245, 245, 245),
}
BACKGROUNDS = {  # dark and far from every object colour
    "black": (8, 8, 8),
    "gray": (80, 80, 80),
    "dark blue": (10, 20, 75),
    "dark green": (10, 60, 25),
}
SIZES = {"small": 0.24, "medium": 0.36, "large": 0.50}  # object diameter as a fraction of the image side
POSITIONS = {  # name -> (x, y) centre as a fraction of the image side
    "top left": (0.25, 0.25), "top": (0.5, 0.25), "top right": (0.75, 0.25),
    "left": (0.25, 0.5), "center": (0.5, 0.5), "right": (0.75, 0.5),
    "bottom left": (0.25, 0.75), "bottom": (0.5, 0.75), "bottom right": (0.75, 0.75),
}
FACTOR_NAMES = ("shape", "colour", "size", "position", "background")
FACTOR_VALUES = {
    "shape": SHAPES, "colour": tuple(COLOURS), "size": tuple(SIZES),
    "position": tuple(POSITIONS), "background": tuple(BACKGROUNDS),
}
# Colour x shape pairs never drawn in training: a model that renders them has composed
# colour and shape instead of memorizing pairs.
HELD_OUT_PAIRS = frozenset({("red", "triangle"), ("green", "star"), ("blue", "ring"), ("yellow", "cross")})

SUPERSAMPLE = 4
JITTER = 0.03  # centre jitter, fraction of the side: well under the 0.25 spacing of the grid
SIZE_JITTER = 0.06  # relative diameter jitter: size classes stay separated by > 30%
MAX_ROTATION = 15.0  # degrees, for shapes that have an orientation
RING_HOLE = 0.55  # inner radius of a ring over its outer radius


@dataclass(frozen=True)
class Factors:
    """The ground truth of one image."""

    shape: str
    colour: str
    size: str
    position: str
    background: str

    def as_dict(self) -> dict[str, str]:
        """The factors as a plain dict."""
        return asdict(self)


def sample_factors(rng: np.random.Generator, split: str = "train") -> Factors:
    """Draw uniform factors; `split` "train" never draws a held-out pair, "held_out" draws only those."""
    if split not in ("train", "held_out", "all"):
        raise ValueError(f"split must be 'train', 'held_out' or 'all', not {split!r}")
    if split == "held_out":
        pairs = sorted(HELD_OUT_PAIRS)
        colour, shape = pairs[rng.integers(len(pairs))]
    else:
        while True:
            colour = FACTOR_VALUES["colour"][rng.integers(len(COLOURS))]
            shape = SHAPES[rng.integers(len(SHAPES))]
            if split == "all" or (colour, shape) not in HELD_OUT_PAIRS:
                break
    pick = lambda name: FACTOR_VALUES[name][rng.integers(len(FACTOR_VALUES[name]))]  # noqa: E731
    return Factors(shape=shape, colour=colour, size=pick("size"), position=pick("position"), background=pick("background"))


def _rotate(points: np.ndarray, degrees: float) -> np.ndarray:
    a = math.radians(degrees)
    rot = np.array([[math.cos(a), -math.sin(a)], [math.sin(a), math.cos(a)]])
    return points @ rot.T


def _outline(shape: str, radius: float) -> np.ndarray | None:
    """Polygon vertices around the origin for polygonal shapes; None for round ones."""
    if shape == "square":
        r = radius * 0.85  # a square's corners reach further than a circle's edge
        return np.array([[-r, -r], [r, -r], [r, r], [-r, r]])
    if shape == "triangle":
        angles = np.radians([-90, 30, 150])
        pts = np.stack([np.cos(angles), np.sin(angles)], 1) * radius * 1.1
        return pts + [0, radius * 0.15]  # centre the bounding box, not the circumcircle
    if shape == "star":
        angles = np.radians(np.arange(10) * 36 - 90)
        radii = np.where(np.arange(10) % 2 == 0, radius * 1.05, radius * 0.5)
        return np.stack([np.cos(angles) * radii, np.sin(angles) * radii], 1)
    if shape == "cross":
        w, r = radius * 0.34, radius
        return np.array([[-w, -r], [w, -r], [w, -w], [r, -w], [r, w], [w, w], [w, r], [-w, r],
                         [-w, w], [-r, w], [-r, -w], [-w, -w]])
    return None


def shape_area(shape: str, radius: float) -> float:
    """Area of a shape drawn at `radius` (exact: shoelace formula on its outline)."""
    if shape == "circle":
        return math.pi * radius**2
    if shape == "ring":
        return math.pi * radius**2 * (1 - RING_HOLE**2)
    x, y = _outline(shape, radius).T
    return 0.5 * abs(float(np.dot(x, np.roll(y, 1)) - np.dot(y, np.roll(x, 1))))


def render_factors(factors: Factors, rng: np.random.Generator, size: int = 32) -> Image.Image:
    """Draw one object with the given factors; position, size and rotation jitter come from `rng`."""
    big = size * SUPERSAMPLE
    image = Image.new("RGB", (big, big), BACKGROUNDS[factors.background])
    draw = ImageDraw.Draw(image)
    cx, cy = (np.array(POSITIONS[factors.position]) + rng.uniform(-JITTER, JITTER, 2)) * big
    radius = SIZES[factors.size] * (1 + rng.uniform(-SIZE_JITTER, SIZE_JITTER)) * big / 2
    rotation = rng.uniform(-MAX_ROTATION, MAX_ROTATION)
    colour = COLOURS[factors.colour]
    if factors.shape in ("circle", "ring"):
        draw.ellipse([cx - radius, cy - radius, cx + radius, cy + radius], fill=colour)
        if factors.shape == "ring":
            inner = radius * RING_HOLE
            draw.ellipse([cx - inner, cy - inner, cx + inner, cy + inner], fill=BACKGROUNDS[factors.background])
    else:
        points = _rotate(_outline(factors.shape, radius), rotation) + [cx, cy]
        draw.polygon([tuple(p) for p in points], fill=colour)
    return image.resize((size, size), Image.Resampling.BOX)


def render(seed: int, size: int = 32, split: str = "train") -> tuple[Image.Image, Factors]:
    """Render the image of `seed`: the same seed always gives the same factors and pixels."""
    rng = np.random.default_rng(seed)
    factors = sample_factors(rng, split)
    return render_factors(factors, rng, size), factors
