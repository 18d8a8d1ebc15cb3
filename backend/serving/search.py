"""FAISS indexes for "similar" queries: inner product over L2-normalized rows, exact when small, IVF when large."""

from pathlib import Path

import faiss
import numpy as np

EXACT_LIMIT = 100_000  # below this many rows a flat (exact) index answers in milliseconds


def normalize_rows(vectors: np.ndarray) -> np.ndarray:
    """float32 copy with unit-norm rows (zero rows stay zero)."""
    vectors = np.ascontiguousarray(vectors, dtype=np.float32).copy()
    norms = np.linalg.norm(vectors, axis=1, keepdims=True)
    np.divide(vectors, norms, out=vectors, where=norms > 0)
    return vectors


class VectorIndex:
    """Cosine-similarity search over a fixed set of rows."""

    def __init__(self, index: faiss.Index):
        self.index = index

    @classmethod
    def build(cls, vectors: np.ndarray, exact_limit: int = EXACT_LIMIT, target_recall: float = 0.99, seed: int = 0) -> "VectorIndex":
        """Flat inner-product index up to `exact_limit` rows; above, IVF-Flat probing enough lists for `target_recall`@10.

        nprobe is tuned on rows drawn from the data themselves, checked against exact search.
        """
        vectors = normalize_rows(vectors)
        n, d = vectors.shape
        if n <= exact_limit:
            index = faiss.IndexFlatIP(d)
            index.add(vectors)
            return cls(index)
        rng = np.random.default_rng(seed)
        n_lists = int(4 * np.sqrt(n))
        index = faiss.IndexIVFFlat(faiss.IndexFlatIP(d), d, n_lists, faiss.METRIC_INNER_PRODUCT)
        index.train(vectors[rng.choice(n, min(n, 64 * n_lists), replace=False)])
        index.add(vectors)
        queries = vectors[rng.choice(n, 100, replace=False)]
        reference = exact_search(vectors, queries, 10)
        for nprobe in (8, 16, 32, 64, 128, 256, n_lists):
            index.nprobe = min(nprobe, n_lists)
            if recall_at_k(index.search(queries, 10)[1], reference) >= target_recall:
                break
        return cls(index)

    @property
    def exact(self) -> bool:
        return isinstance(self.index, faiss.IndexFlat)

    def __len__(self) -> int:
        return self.index.ntotal

    def search(self, queries: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
        """(scores, ids), each [n_queries, k]; queries are normalized here."""
        k = min(k, len(self))
        # One query at a time is the app's workload; FAISS's OpenMP threads then only wait on each other
        # (a flat search of 10k rows: 17 ms with 2 threads, 0.1 ms with 1, on a busy 2-core machine).
        # The setting is per thread and shared with torch, so it is restored afterwards.
        previous = faiss.omp_get_max_threads()
        faiss.omp_set_num_threads(1)
        try:
            return self.index.search(normalize_rows(np.atleast_2d(queries)), k)
        finally:
            faiss.omp_set_num_threads(previous)

    def save(self, path: str | Path) -> None:
        faiss.write_index(self.index, str(path))

    @classmethod
    def load(cls, path: str | Path) -> "VectorIndex":
        return cls(faiss.read_index(str(path)))


def exact_search(vectors: np.ndarray, queries: np.ndarray, k: int) -> np.ndarray:
    """Brute-force numpy top-k ids by cosine similarity: the reference for recall checks and benchmarks."""
    scores = normalize_rows(queries) @ normalize_rows(vectors).T
    top = np.argpartition(-scores, min(k, scores.shape[1] - 1), axis=1)[:, :k]
    order = np.argsort(-np.take_along_axis(scores, top, axis=1), axis=1, kind="stable")
    return np.take_along_axis(top, order, axis=1)


def recall_at_k(found: np.ndarray, reference: np.ndarray) -> float:
    """Mean fraction of each reference top-k that the index also returned."""
    return float(np.mean([len(set(f) & set(r)) / len(r) for f, r in zip(found, reference)]))
