"""FAISS indexes for "similar" queries: inner product over L2-normalized rows, exact when small."""

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
    def build(cls, vectors: np.ndarray, exact_limit: int = EXACT_LIMIT) -> "VectorIndex":
        """Flat inner-product index below `exact_limit` rows, HNSW (32 links, efSearch 128) above."""
        vectors = normalize_rows(vectors)
        n, d = vectors.shape
        if n <= exact_limit:
            index = faiss.IndexFlatIP(d)
        else:
            index = faiss.IndexHNSWFlat(d, 32, faiss.METRIC_INNER_PRODUCT)
            index.hnsw.efConstruction = 80
            index.hnsw.efSearch = 128
        index.add(vectors)
        return cls(index)

    @property
    def exact(self) -> bool:
        return isinstance(self.index, faiss.IndexFlat)

    def __len__(self) -> int:
        return self.index.ntotal

    def search(self, queries: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
        """(scores, ids), each [n_queries, k]; queries are normalized here."""
        k = min(k, len(self))
        return self.index.search(normalize_rows(np.atleast_2d(queries)), k)

    def save(self, path: str | Path) -> None:
        faiss.write_index(self.index, str(path))

    @classmethod
    def load(cls, path: str | Path) -> "VectorIndex":
        return cls(faiss.read_index(str(path)))


def exact_search(vectors: np.ndarray, queries: np.ndarray, k: int) -> np.ndarray:
    """Brute-force numpy top-k ids by cosine similarity: the reference for recall checks."""
    scores = normalize_rows(queries) @ normalize_rows(vectors).T
    return np.argsort(-scores, axis=1, kind="stable")[:, :k]


def recall_at_k(found: np.ndarray, reference: np.ndarray) -> float:
    """Mean fraction of each reference top-k that the index also returned."""
    return float(np.mean([len(set(f) & set(r)) / len(r) for f, r in zip(found, reference)]))
