"""FAISS (as the app builds it) vs numpy brute force for top-10 cosine search over synthetic rows.

Rows are a mixture of 1,000 Gaussian clusters (embeddings of real images cluster; isotropic
noise has no structure for an inverted file to use), queries are fresh draws from the mixture.

Usage: python bench/bench_search.py [--sizes 10000 100000 1000000] [--dim 64] [--queries 200]
"""

import argparse
import os
import sys
from pathlib import Path

# Both sides single-threaded: the app answers one query at a time, and on a busy 2-core machine
# BLAS threads waiting on each other made numpy's 10k-row product 40x slower.
os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")
os.environ.setdefault("OMP_NUM_THREADS", "1")

import numpy as np  # noqa: E402

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from backend.serving.search import VectorIndex, exact_search, normalize_rows, recall_at_k  # noqa: E402
from bench.common import device_name, percentile, time_calls  # noqa: E402


def numpy_top_k(rows: np.ndarray, query: np.ndarray, k: int) -> np.ndarray:
    """The baseline: one matrix-vector product over pre-normalized rows, then a partial sort."""
    scores = rows @ (query / np.linalg.norm(query))
    top = np.argpartition(-scores, k)[:k]
    return top[np.argsort(-scores[top])]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--sizes", type=int, nargs="+", default=[10_000, 100_000, 1_000_000])
    parser.add_argument("--dim", type=int, default=64)
    parser.add_argument("--queries", type=int, default=200)
    args = parser.parse_args()
    rng = np.random.default_rng(0)
    print(f"device: {device_name()}")
    print(f"{'rows':>9} {'index':>6} {'faiss p50 ms':>13} {'faiss p99 ms':>13} {'numpy p50 ms':>13} {'numpy p99 ms':>13} {'speed-up p50':>12} {'recall@10':>9}")
    for n in args.sizes:
        centres = rng.standard_normal((1000, args.dim), dtype=np.float32)
        rows = normalize_rows(centres[rng.integers(1000, size=n)] + 0.5 * rng.standard_normal((n, args.dim), dtype=np.float32))
        queries = centres[rng.integers(1000, size=args.queries)] + 0.5 * rng.standard_normal((args.queries, args.dim), dtype=np.float32)
        index = VectorIndex.build(rows)
        it = iter(range(10**9))
        faiss_times = time_calls(lambda: index.search(queries[next(it) % len(queries)], 10), repeats=args.queries)
        it = iter(range(10**9))
        numpy_times = time_calls(lambda: numpy_top_k(rows, queries[next(it) % len(queries)], 10), repeats=min(args.queries, 50))
        recall = recall_at_k(index.search(queries, 10)[1], exact_search(rows, queries, 10))
        kind = "flat" if index.exact else f"ivf{index.index.nlist}/p{index.index.nprobe}"
        f50, f99, n50, n99 = (1e3 * percentile(t, q) for t, q in ((faiss_times, 50), (faiss_times, 99), (numpy_times, 50), (numpy_times, 99)))
        print(f"{n:>9} {kind:>6} {f50:>13.3f} {f99:>13.3f} {n50:>13.3f} {n99:>13.3f} {n50 / f50:>11.1f}x {recall:>9.3f}")


if __name__ == "__main__":
    main()
