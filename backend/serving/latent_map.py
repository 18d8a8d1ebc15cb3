"""A 2-D map of all latents: UMAP of their feature trajectories, computed once at build time (index stage)."""

import warnings

import numpy as np

MIN_LATENTS = 4  # UMAP needs a few neighbours per point


def latent_map(vectors: np.ndarray, seed: int = 0) -> np.ndarray:
    """Float32[n, 2] coordinates of `vectors` Float[n, D] (feature trajectories), near where cosine-similar.

    Cosine matches "similar latents" (the FAISS index compares normalized vectors); the fixed seed
    makes a rebuild draw the same map.
    """
    import umap  # imports numba: only the build needs it

    if len(vectors) < MIN_LATENTS:
        raise ValueError(f"a latent map needs at least {MIN_LATENTS} latents, got {len(vectors)}")
    reducer = umap.UMAP(n_neighbors=min(15, len(vectors) - 1), min_dist=0.1, metric="cosine", random_state=seed)
    with warnings.catch_warnings():  # a fixed seed turns off parallel UMAP, which it says: deliberate here
        warnings.filterwarnings("ignore", message=".*n_jobs.*", category=UserWarning)
        return reducer.fit_transform(np.asarray(vectors, dtype=np.float32)).astype(np.float32)
