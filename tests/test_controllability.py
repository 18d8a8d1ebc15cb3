from types import SimpleNamespace

import pytest

import torch

from backend.evaluation.controllability import (
    SteeringJudge,
    images_not_showing,
    insertion_windows,
    images_showing,
    labelled_latents,
    step_windows,
    success_rates,
)


@pytest.mark.parametrize("num_steps", [6, 20, 25])
def test_step_windows_split_the_schedule_into_thirds(num_steps):
    windows = step_windows(num_steps)
    assert windows["all"] == (0, num_steps - 1)
    thirds = [windows[w] for w in ("early", "middle", "late")]
    covered = [s for start, end in thirds for s in range(start, end + 1)]
    assert covered == list(range(num_steps))  # disjoint, in order, nothing left out


def bundle_of(colours, labels=()):
    return SimpleNamespace(images=[{"factors": {"colour": c}} for c in colours], labels=list(labels))


def test_images_not_showing_a_value_cycle_over_the_other_values():
    bundle = bundle_of(["red", "red", "red", "green", "blue", "blue"])
    assert images_not_showing(bundle, "colour", "red", 3) == [4, 3, 5]  # blue, green, blue: alphabetical round robin
    assert images_not_showing(bundle, "colour", "red", 10) == [4, 3, 5]
    assert images_showing(bundle, "colour", "red", 2) == [0, 1]


def test_labelled_latents_are_grouped_by_value_purest_first():
    bundle = bundle_of([], labels=[{"factor": "colour", "value": "red", "purity": 0.5}, {},
                                   {"factor": "colour", "value": "red", "purity": 0.9},
                                   {"factor": "shape", "value": "star", "purity": 1.0}])
    assert labelled_latents(bundle, "colour") == {"red": [2, 0]}


class ScriptedJudge(SteeringJudge):
    """Readings given in advance, so the trial logic is tested apart from the model."""

    def __init__(self, base, steered):
        super().__init__(bundle=None, classifier=None)
        self.scripted = (base, steered)

    def readings(self, image_id, steers, window):
        return self.scripted


BASE = {"colour": "green", "shape": "star", "background": "black"}


@pytest.mark.parametrize("steered, reached, clean", [
    (BASE | {"colour": "red"}, True, True),
    (BASE | {"colour": "red", "shape": "circle"}, True, False),  # reached, but another factor moved
    (BASE | {"colour": "blue"}, False, False),
])
def test_add_trials_need_the_target_and_clean_ones_keep_the_other_factors(steered, reached, clean):
    trial = ScriptedJudge(BASE, steered).trial("add", "colour", "red", 7, [], 10.0, "all", (0, 5))
    assert (trial.reached, trial.clean, trial.image_id, trial.strength) == (reached, clean, 7, 10.0)


def test_trials_on_images_that_do_not_qualify_are_skipped():
    assert ScriptedJudge(BASE | {"colour": "red"}, BASE).trial("add", "colour", "red", 0, [], 1.0, "all", (0, 5)) is None
    assert ScriptedJudge(BASE, BASE).trial("ablate", "colour", "red", 0, [], 0.0, "all", (0, 5)) is None
    ablated = ScriptedJudge(BASE, BASE | {"colour": "blue"}).trial("ablate", "colour", "green", 0, [], 0.0, "all", (0, 5))
    assert ablated.reached and ablated.clean


def test_success_rates_count_by_key_and_filter():
    trials = [dict(kind="add", strength=s, window=w, reached=r, clean=c)
              for s, w, r, c in [(3, "all", False, False), (3, "all", True, False), (10, "all", True, True), (10, "early", True, True)]]
    trials.append(dict(kind="ablate", strength=0, window="all", reached=True, clean=True))
    assert success_rates(trials, "strength", window="all") == {
        3: {"n": 2, "reached": 0.5, "clean": 0.0}, 10: {"n": 1, "reached": 1.0, "clean": 1.0}}
    assert success_rates(trials, "window", kind="ablate") == {"all": {"n": 1, "reached": 1.0, "clean": 1.0}}


@pytest.mark.parametrize("num_steps", [6, 20])
def test_insertion_windows_start_later_and_all_end_at_the_last_step(num_steps):
    windows = insertion_windows(num_steps)
    starts = [start for start, end in windows.values()]
    assert starts == sorted(starts) and 0 < starts[0] and all(end == num_steps - 1 for _, end in windows.values())
    assert list(windows) == [f"from {s}" for s in starts]


def test_the_prompting_baseline_writes_the_target_into_the_caption_with_the_same_seed():
    asked = []

    def generate(prompt, seed, steering):
        asked.append((prompt, seed, steering))
        return SimpleNamespace(base_run=SimpleNamespace(result=SimpleNamespace(images=torch.zeros(1, 3, 4, 4) + len(asked))))

    factors = {"colour": "green", "position": "center", "shape": "star", "size": "large"}  # the caption named no background
    bundle = SimpleNamespace(images=[{"factors": factors, "prompt": "a big green star", "seed": 5}], generate=generate)
    base_reading = BASE | factors | {"background": "dark blue"}
    readings = iter([[base_reading], [base_reading | {"colour": "red"}]])
    classifier = SimpleNamespace(predict=lambda images: next(readings))
    trial = SteeringJudge(bundle, classifier).prompted("colour", "red", 0)
    assert asked[0] == ("a big green star", 5, []) and asked[1][1:] == (5, [])
    assert "red" in asked[1][0] and "green" not in asked[1][0] and "star" in asked[1][0]
    assert "dark blue background" in asked[1][0]  # a factor the caption left out is named as the base image shows it
    assert (trial.kind, trial.window, trial.reached, trial.clean) == ("prompt", "prompt", True, True)
