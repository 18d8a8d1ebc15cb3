"""The latent list: per-latent stats as numpy columns, searched, filtered and sorted for the Browse tab."""

from dataclasses import dataclass

import numpy as np

from backend.errors import ExplorerError
from backend.serving.icons import agrees, effect_text

SORTS = ("frequency", "max activation", "purity", "peak step", "latent id")
HEADERS = ["latent", "label", "effect", "freq.", "max", "purity", "peak", "kind"]
MAX_QUERY = 200


@dataclass
class LatentTable:
    """Per-latent columns: frequency, max activation, label purity, peak step (sampler step, relative profile), label text,
    effect text (what adding it does, read from its icons; empty without effect labels), kind (local: per position;
    global: per image, global_local bundles)."""

    frequency: np.ndarray
    max_activation: np.ndarray
    purity: np.ndarray
    peak_step: np.ndarray
    labels: list[str]
    effects: list[str]
    agreement: list[bool | None]  # per latent: whether its effect includes its label's value (None: no label or no effect)
    kinds: list[str]

    @classmethod
    def of(cls, bundle) -> "LatentTable":
        """The table of a bundle with an atlas."""
        atlas = bundle.atlas
        steps = np.asarray(bundle.manifest["schedule"]["recorded_steps"])
        return cls(
            frequency=atlas["frequency"].float().numpy(),
            max_activation=atlas["max"].float().numpy(),
            purity=np.array([label.get("purity") or 0.0 for label in bundle.labels], dtype=np.float64),
            peak_step=steps[bundle.temporal_profiles.peak_index.numpy()],
            labels=[f"{label['factor']} {label['value']}" if label.get("factor") else "" for label in bundle.labels],
            **effect_columns(bundle),
            kinds=["global" if image_level else "local" for image_level in bundle.is_global.tolist()],
        )

    def sort_key(self, sort: str) -> np.ndarray:
        """Values to sort by, larger first (earlier first for the peak step and the id)."""
        keys = {"frequency": self.frequency, "max activation": self.max_activation, "purity": self.purity,
                "peak step": -self.peak_step.astype(np.float64), "latent id": -np.arange(len(self.labels), dtype=np.float64)}
        if sort not in keys:
            raise ExplorerError(f"Sort by one of {', '.join(SORTS)}, not {sort!r}.")
        return keys[sort]

    def row(self, j: int) -> list:
        """One table row: id, label, effect, frequency, max activation, purity, peak step, kind."""
        effect = self.effects[j] + (" (not its label)" if self.agreement[j] is False else "")
        return [j, self.labels[j], effect, round(float(self.frequency[j]), 4), round(float(self.max_activation[j]), 3),
                round(float(self.purity[j]), 2), int(self.peak_step[j]), self.kinds[j]]


def effect_columns(bundle) -> dict[str, list]:
    """Each latent's effect label as text and whether it agrees with its label (empty for a bundle without usable ones)."""
    try:
        effects = bundle.effects
    except ExplorerError:
        return {"effects": [""] * bundle.n_latents, "agreement": [None] * bundle.n_latents}
    return {"effects": [effect_text(changes) for changes in effects],
            "agreement": [agrees(label, changes) for label, changes in zip(bundle.labels, effects)]}


def list_latents(bundle, table: LatentTable, query: str = "", sort: str = "frequency", labelled_only: bool = False,
                 min_frequency: float = 0.0, limit: int = 200) -> tuple[list[list], str]:
    """Rows of the latents matching `query` (an id or label words) and the filters, sorted; and a one-line summary."""
    query = query or ""
    if len(query) > MAX_QUERY:
        raise ExplorerError(f"The search text is {len(query)} characters long; use at most {MAX_QUERY}.")
    if not isinstance(min_frequency, int | float) or not 0.0 <= min_frequency <= 1.0:
        raise ExplorerError(f"Minimum frequency must be between 0 and 1, got {min_frequency!r}.")
    ids = np.asarray(bundle.search_latents(query), dtype=np.int64)
    keep = table.frequency[ids] >= min_frequency
    if labelled_only:
        keep &= np.array([bool(table.labels[j]) for j in ids], dtype=bool)
    ids = ids[keep]
    ids = ids[np.argsort(-table.sort_key(sort)[ids], kind="stable")]
    shown = ids[:limit]
    summary = f"{len(ids)} of {len(table.labels)} latents match" + (f"; showing the first {limit}" if len(ids) > limit else "")
    return [table.row(int(j)) for j in shown], summary
