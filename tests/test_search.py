import numpy as np

from backend.serving.search import VectorIndex, exact_search, normalize_rows, recall_at_k


def test_flat_index_matches_numpy_brute_force():
    rows = np.random.default_rng(0).standard_normal((3000, 32)).astype(np.float32)
    index = VectorIndex.build(rows)
    assert index.exact
    scores, ids = index.search(rows[:20], 10)
    assert np.array_equal(ids, exact_search(rows, rows[:20], 10))
    assert np.allclose(scores[:, 0], 1.0, atol=1e-5)


def test_ivf_index_above_the_exact_limit_keeps_recall():
    rows = np.random.default_rng(1).standard_normal((20000, 24)).astype(np.float32)
    index = VectorIndex.build(rows, exact_limit=1000)
    assert not index.exact and index.index.nprobe < index.index.nlist  # it did not just scan everything
    queries = np.random.default_rng(2).standard_normal((100, 24)).astype(np.float32)
    assert recall_at_k(index.search(queries, 10)[1], exact_search(rows, queries, 10)) >= 0.99


def test_index_round_trips_through_a_file(tmp_path):
    rows = np.random.default_rng(2).standard_normal((100, 8)).astype(np.float32)
    VectorIndex.build(rows).save(tmp_path / "i.faiss")
    assert np.array_equal(VectorIndex.load(tmp_path / "i.faiss").search(rows[:3], 5)[1], exact_search(rows, rows[:3], 5))


def test_zero_rows_stay_zero_when_normalized():
    out = normalize_rows(np.array([[0.0, 0.0], [3.0, 4.0]]))
    assert np.array_equal(out, np.array([[0.0, 0.0], [0.6, 0.8]], dtype=np.float32))
