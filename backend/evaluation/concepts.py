"""Does "find latents for a concept" (Bundle.contrast) find the latents labelled with that concept?

For each value of a factor: random shapes captions that show it, and the same captions with the
factor changed to another value, contrasted over seeds. The hit rate at top n is the share of the
n highest-ranked latents whose atlas label is that factor value.
"""

import numpy as np

from backend.serving.bundle import Bundle
from backend.shapes.captions import canonical_caption
from backend.shapes.render import FACTOR_VALUES, Factors, sample_factors

CONCEPT_TOP = 5  # the hit rate is over this many top-ranked latents


def paired_captions(factor: str, value: str, count: int, seed: int) -> tuple[list[str], list[str]]:
    """`count` captions whose `factor` is `value`, and the same captions with each a different value of `factor`."""
    rng = np.random.default_rng(seed)
    others = [v for v in FACTOR_VALUES[factor] if v != value]
    with_, without = [], []
    for i in range(count):
        factors = sample_factors(rng, split="all").as_dict()
        with_.append(canonical_caption(Factors(**factors | {factor: value})))
        without.append(canonical_caption(Factors(**factors | {factor: others[i % len(others)]})))
    return with_, without


def concept_hits(bundle: Bundle, factors: list[str], captions: int = 6, seeds=(0, 1), top: int = CONCEPT_TOP) -> dict[str, dict[str, float]]:
    """Per factor, per value: the share of the `top` latents Bundle.contrast ranks first that are labelled with it."""
    hits = {}
    for factor in factors:
        hits[factor] = {}
        for index, value in enumerate(FACTOR_VALUES[factor]):
            with_, without = paired_captions(factor, value, captions, seed=index)
            ranked = bundle.contrast(with_, without, seeds, n=top)
            labels = [bundle.labels[row.latent] for row in ranked]
            hits[factor][value] = sum(label.get("factor") == factor and label.get("value") == value for label in labels) / top
    return hits
