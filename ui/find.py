"""The Browse tab's Find panel: latents for a concept, from two prompt lists typed one prompt per line."""

from backend.errors import ExplorerError
from backend.serving.contrast import MAX_SEEDS
from ui.explorer import Explorer
from ui.state import parse_int
from ui.steer import check_prompt

FOUND = 20
HEADERS = ["latent", "label", "difference", "95 % interval", "with", "without"]
SHAPES_EXAMPLE = ("a medium red star in the top right on a gray background\na small red circle at the top on a dark green background\n"
                  "a large red square at the bottom left on a black background",
                  "a medium green star in the top right on a gray background\na small blue circle at the top on a dark green background\n"
                  "a large yellow square at the bottom left on a black background")


def example_sets(ex: Explorer) -> tuple[str, str]:
    """Prompt lists the panel opens with: one colour against others in the shapes world, empty for other models."""
    return SHAPES_EXAMPLE if ex.bundle.manifest.get("build", {}).get("shapes_prompts") else ("", "")


def prompt_lines(text, which: str) -> list[str]:
    """The non-blank lines of `text`, each a checked prompt (how many a set may hold, Bundle.contrast checks)."""
    if not isinstance(text, str):
        raise ExplorerError(f"Type the prompts {which} the concept, one per line.")
    return [check_prompt(line) for line in text.splitlines() if line.strip()]


def find_latents(ex: Explorer, with_text, without_text, seeds) -> tuple[list[list], str, list]:
    """Rows of HEADERS for the latents that fire most more with the concept, a line saying what the numbers are, and the
    ranking itself (LatentContrast rows: a concept the Edit panel can use as its target)."""
    with_, without = prompt_lines(with_text, "with"), prompt_lines(without_text, "without")
    n_seeds = parse_int(seeds, "Seeds per prompt", 1, MAX_SEEDS)
    ex.generator()  # waits for a model still loading, or says why there is none
    ranked = ex.bundle.contrast(with_, without, seeds=list(range(n_seeds)), n=FOUND)
    rows = [[row.latent, ex.table.labels[row.latent], round(row.difference, 3), f"[{row.low:+.2f}, {row.high:+.2f}]",
             round(row.mean_with, 3), round(row.mean_without, 3)] for row in ranked]
    text = (f"{len(with_) * n_seeds} images with the concept, {len(without) * n_seeds} without (each prompt at seeds 0–{n_seeds - 1}). "
            "An image's activation of a latent is its peak code over positions in units of the latent's typical activation s; "
            "*difference* is the mean with minus the mean without, with its 95 % Welch interval over images. Click a row to open the latent.")
    return rows, text, ranked
