"""The latent list: per-latent stats as numpy columns, searched, filtered and sorted for the Browse tab."""

from dataclasses import dataclass

import numpy as np

from backend.errors import ExplorerError
from backend.serving.atlas import IMAGE_WIDE
from backend.serving.icons import agrees, effect_text

DEFAULT_SORT = "localized, label precision"
SORTS = (DEFAULT_SORT, "label precision", "frequency", "max activation", "purity", "peak step", "latent id")
HEADERS = ["latent", "label", "effect", "freq.", "max", "purity", "precision", "peak", "kind"]
MAX_QUERY = 200
# The default order leads with precise, localized latents: local (not image-wide), on at least LEAD_MIN_IMAGES of the atlas
# images (rarer ones have a precision of a few images) and with label precision at least LEAD_PRECISION.
LEAD_MIN_IMAGES = 0.01
LEAD_PRECISION = 0.8


@dataclass
class LatentTable:
    """Per-latent columns: frequency, max activation, label purity (its top images), label precision (all atlas images it fires
    on, atlas.label_precision), spread (mean share of an image's positions where it fires), share of atlas images it fires
    on, peak step (sampler step, relative profile), label text, effect text (what adding it does, read from its icons; empty
    without effect labels), kind (local: per position; image-wide: local but over more than a quarter of each image it
    fires on; global: per image, global_local bundles), and for the latents of signed pairs that hold an image-wide one
    (Bundle.signed_pairs) the other side and their cosine."""

    frequency: np.ndarray
    max_activation: np.ndarray
    purity: np.ndarray
    precision: np.ndarray
    spread: np.ndarray
    image_share: np.ndarray
    peak_step: np.ndarray
    labels: list[str]
    effects: list[str]
    agreement: list[bool | None]  # per latent: whether its effect includes its label's value (None: no label or no effect)
    kinds: list[str]
    signed_pairs: dict[int, tuple[int, float]]

    @classmethod
    def of(cls, bundle) -> "LatentTable":
        """The table of a bundle with an atlas."""
        atlas = bundle.atlas
        spread = bundle.image_spread.double().numpy()
        kinds = [kind_of(image_level, float(s)) for image_level, s in zip(bundle.is_global.tolist(), spread)]
        steps = np.asarray(bundle.manifest["schedule"]["recorded_steps"])
        return cls(
            frequency=atlas["frequency"].float().numpy(),
            max_activation=atlas["max"].float().numpy(),
            purity=np.array([label.get("purity") or 0.0 for label in bundle.labels], dtype=np.float64),
            precision=bundle.label_precision.double().numpy(),
            spread=spread,
            image_share=atlas["histogram"].sum(1).double().numpy() / bundle.n_images,
            peak_step=steps[bundle.temporal_profiles.peak_index.numpy()],
            labels=[f"{label['factor']} {label['value']}" if label.get("factor") else "" for label in bundle.labels],
            **effect_columns(bundle),
            kinds=kinds,
            # only image-wide latents are asked (a dense pair fires on about half of each image; each latent asked costs a
            # pass over the decoder), so a pair holds at least one; its other side may be local
            signed_pairs=bundle.signed_pairs([j for j, kind in enumerate(kinds) if kind == "image-wide"]),
        )

    def sorted(self, ids: np.ndarray, sort: str) -> np.ndarray:
        """`ids` in the order `sort` names, larger first (earlier first for the peak step and the id).

        The default order puts the precise, localized latents first, most frequent first (the app
        opens on the first: views.default_latent); then the rest by label precision, then frequency.
        """
        leads = self.leads()
        keys = {DEFAULT_SORT: (self.frequency, np.where(leads, 0.0, self.precision), leads), "label precision": (self.frequency, self.precision),
                "frequency": (self.frequency,), "max activation": (self.max_activation,), "purity": (self.purity,),
                "peak step": (-self.peak_step.astype(np.float64),), "latent id": (-np.arange(len(self.labels), dtype=np.float64),)}
        if sort not in keys:
            raise ExplorerError(f"Sort by one of {', '.join(SORTS)}, not {sort!r}.")
        return ids[np.lexsort(tuple(-np.asarray(key, dtype=np.float64)[ids] for key in keys[sort]))]

    def leads(self) -> np.ndarray:
        """Bool per latent: local (not image-wide), on at least LEAD_MIN_IMAGES of the atlas images, label precision ≥ LEAD_PRECISION."""
        return (np.array([k == "local" for k in self.kinds]) & (self.image_share >= LEAD_MIN_IMAGES)
                & (self.precision >= LEAD_PRECISION))

    def row(self, j: int) -> list:
        """One table row: id, label, effect, frequency, max activation, purity, precision, peak step, kind."""
        effect = self.effects[j] + (" (not its label)" if self.agreement[j] is False else "")
        return [j, self.labels[j], effect, round(float(self.frequency[j]), 4), round(float(self.max_activation[j]), 3),
                round(float(self.purity[j]), 2), round(float(self.precision[j]), 2), int(self.peak_step[j]), self.kind(j)]

    def kind(self, j: int) -> str:
        """Latent j's kind as the tables show it: with the other side of its signed pair, if it is one side of one."""
        return self.kinds[j] + (f", ± pair with {self.signed_pairs[j][0]}" if j in self.signed_pairs else "")


def kind_of(image_level: bool, spread: float) -> str:
    """"global" (one code per image), "image-wide" (local, over more than IMAGE_WIDE of each image it fires on) or "local"."""
    return "global" if image_level else "image-wide" if spread > IMAGE_WIDE else "local"


def effect_columns(bundle) -> dict[str, list]:
    """Each latent's effect label as text and whether it agrees with its label (empty for a bundle without usable ones)."""
    try:
        effects = bundle.effects
    except ExplorerError:
        return {"effects": [""] * bundle.n_latents, "agreement": [None] * bundle.n_latents}
    return {"effects": [effect_text(changes) for changes in effects],
            "agreement": [agrees(label, changes) for label, changes in zip(bundle.labels, effects)]}


def list_latents(bundle, table: LatentTable, query: str = "", sort: str = DEFAULT_SORT, labelled_only: bool = False,
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
    ids = table.sorted(ids[keep], sort)
    shown = ids[:limit]
    summary = f"{len(ids)} of {len(table.labels)} latents match" + (f"; showing the first {limit}" if len(ids) > limit else "")
    return [table.row(int(j)) for j in shown], summary
