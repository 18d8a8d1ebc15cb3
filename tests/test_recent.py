import threading
import time

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from backend.serving.recent import Recent


def test_the_least_recently_used_value_is_dropped_first():
    cache = Recent(2)
    for key in "ab":
        cache.get(key, lambda k=key: k.upper())
    cache.get("a", lambda: pytest.fail("a is kept"))  # a is now the most recent
    cache.get("c", lambda: "C")
    assert cache.keys() == ["a", "c"]


def test_a_byte_budget_keeps_the_newest_values_that_fit_and_always_the_one_just_computed():
    cache = Recent(100, size_of=len)
    cache.get(1, lambda: "x" * 60)
    cache.get(2, lambda: "x" * 30)
    cache.get(3, lambda: "x" * 50)  # 140 > 100: the oldest goes
    assert cache.keys() == [2, 3] and cache.kept == 80
    assert cache.get(4, lambda: "x" * 500) == "x" * 500  # over the budget alone: kept, the rest dropped
    assert cache.keys() == [4] and cache.kept == 500


@settings(max_examples=60, deadline=None)
@given(st.lists(st.tuples(st.integers(0, 9), st.integers(1, 40)), max_size=60), st.integers(1, 120))
def test_the_kept_values_match_an_independent_model_of_the_rule(asks, budget):
    """Replay random asks against a plain list model: same keys kept, in the same order, within the budget."""
    cache, sizes = Recent(budget, size_of=lambda value: value[1]), {}
    model: list[int] = []  # keys, least recent first
    for key, size in asks:
        value = cache.get(key, lambda k=key, s=size: (k, s))
        if key in model:
            model.remove(key)
        else:
            sizes[key] = size
        assert value == (key, sizes[key])
        model.append(key)
        while sum(sizes[k] for k in model) > budget and len(model) > 1:
            model.pop(0)
    assert cache.keys() == model
    assert cache.kept == sum(sizes[k] for k in model)


def test_concurrent_asks_for_one_key_compute_it_once():
    cache, calls = Recent(4), []

    def slow():
        calls.append(1)
        time.sleep(0.2)
        return object()

    results = []
    threads = [threading.Thread(target=lambda: results.append(cache.get("k", slow))) for _ in range(6)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert len(calls) == 1 and len(results) == 6 and all(r is results[0] for r in results)


def test_a_failed_computation_is_not_kept_and_the_next_ask_tries_again():
    cache = Recent(4)
    with pytest.raises(ZeroDivisionError):
        cache.get("k", lambda: 1 / 0)
    assert "k" not in cache and len(cache) == 0
    assert cache.get("k", lambda: 7) == 7


def test_a_budget_must_be_positive():
    with pytest.raises(ValueError, match="budget"):
        Recent(0)
