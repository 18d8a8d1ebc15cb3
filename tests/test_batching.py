"""Batched sampling: runs stepped together in one UNet call give what each gives alone."""

import os
import sys
import threading
import time

import pytest
import torch

from backend.build import Build, BuildConfig
from backend.diffusion.hooks import EditHook, TrajectoryRecorder
from backend.diffusion.sampler import SamplingRun, sample, step_together
from backend.diffusion.steering import Steer
from backend.serving.batching import NICENESS, BatchedSampler
from backend.serving.bundle import Bundle
from backend.serving.progress import reporting
from backend.serving.generation import Generator
from tests.tiny_models import tiny_model

PROMPTS = [f"a {c} {s}" for c in ("red", "blue", "green") for s in ("circle", "star", "square")]
ROUNDING = 1e-5  # batched matrix products may round differently in the last bits


@pytest.fixture(scope="module")
def model():
    return tiny_model()


@pytest.fixture(scope="module")
def bundle(tmp_path_factory, model):
    root = tmp_path_factory.mktemp("batch")
    (root / "prompts.txt").write_text("\n".join(PROMPTS))
    Build(BuildConfig(model="tiny", out=str(root / "bundle"), prompts=str(root / "prompts.txt"), num_steps=6, recorded_steps=3,
                      n_latents=32, k=4, epochs=1, sae_batch_size=128, top_n=4, images_per_shard=9), model=model).run()
    loaded = Bundle.load(root / "bundle")
    loaded.attach_model(model)
    return loaded


def double_after_step(step, output):
    return output * 2 if step >= 2 else None


def test_runs_at_different_steps_with_different_settings_batch_to_their_solo_results(model):
    settings = [
        dict(prompts="a red circle", seed=1, guidance_scale=3.0),
        dict(prompts=["a blue star", "a green square"], seed=[5, 9], guidance_scale=1.0),  # no guidance: one row per image
        dict(prompts="a star", seed=2, guidance_scale=7.0, hooks=[EditHook("up_ft1", double_after_step)]),
    ]
    solo = [sample(model, num_steps=5, **s) for s in settings]
    solo_records = TrajectoryRecorder("up_ft1", [1, 3])
    sample(model, "a red circle", 1, num_steps=5, guidance_scale=3.0, hooks=[solo_records])

    records = TrajectoryRecorder("up_ft1", [1, 3])
    runs = [SamplingRun(model, num_steps=5, **s) for s in settings]
    runs[0].hooks.append(records)
    step_together(model, runs[:1])
    step_together(model, runs[:1])  # run 0 is two steps ahead when the others join
    while not all(run.done for run in runs):
        step_together(model, [run for run in runs if not run.done])
    for run, alone in zip(runs, solo):
        assert run.result().images.shape == alone.images.shape
        assert torch.allclose(run.result().images, alone.images, atol=ROUNDING)
    assert torch.allclose(records.trajectories(), solo_records.trajectories(), atol=ROUNDING)


def generate(bundle, request):
    prompt, seed, steers, window, mask, guidance = request
    return bundle.generate(prompt, seed, steers, window=window, mask=mask, guidance_scale=guidance).steered_images


REQUESTS = [
    ("a red circle", 0, [Steer(3, 8.0)], (0, 5), "all", None),
    ("a blue star", 4, [Steer(7, 0.0, "scale")], (2, 5), "fired", 2.0),
    ("a green square", 1, [Steer(1, -5.0), Steer(2, 4.0)], (3, 4), [[1.0, 0.0], [0.0, 0.5]], 5.0),
    ("a red circle", 0, [Steer(5, 12.0)], (1, 5), "all", None),  # the same base run as the first request
]


def test_concurrent_generations_share_unet_calls_and_match_sequential_ones(monkeypatch, model, bundle):
    expected = [generate(bundle, r) for r in REQUESTS]
    fresh = Bundle.load(bundle.root)
    fresh.attach_model(model)
    sampler = fresh.generator.sampler
    results = [None] * len(REQUESTS)

    def ask(i):
        results[i] = generate(fresh, REQUESTS[i])

    submitted = threading.Semaphore(0)
    run = sampler.run
    monkeypatch.setattr(sampler, "run", lambda r: submitted.release() or run(r))
    threads = [threading.Thread(target=ask, args=(i,)) for i in range(len(REQUESTS))]
    with sampler.model_lock:  # the first run waits for the lock; the other base runs queue behind it and join its batch
        for thread in threads:
            thread.start()
        for _ in range(3):  # three distinct base runs (the fourth request shares the first one's)
            submitted.acquire(timeout=30)
    for thread in threads:
        thread.join()
    for got, want in zip(results, expected):
        assert torch.allclose(got, want, atol=ROUNDING)
    solo_calls = 3 * 6 + sum(6 - r[3][0] for r in REQUESTS)  # three distinct base runs, then each steered run from its window
    assert sampler.calls < solo_calls
    assert sampler.rows_stepped == 2 * solo_calls  # every run still takes each of its steps once, two rows with guidance


def test_a_failing_call_fails_its_runs_and_the_sampler_goes_on(model):
    lock = threading.RLock()
    sampler = BatchedSampler(model, lock)

    def explode(step, output):
        raise RuntimeError("hook failed")

    with pytest.raises(RuntimeError, match="hook failed"):
        sampler.run(SamplingRun(model, "a star", num_steps=3, hooks=[EditHook("up_ft1", explode)]))
    result = sampler.run(SamplingRun(model, "a star", num_steps=3))
    assert torch.allclose(result.images, sample(model, "a star", num_steps=3).images, atol=ROUNDING)


def test_concurrent_asks_for_one_base_run_sample_it_once(model, bundle):
    fresh = Bundle.load(bundle.root)
    fresh.attach_model(model)
    generator = fresh.generator
    runs = []
    threads = [threading.Thread(target=lambda: runs.append(generator.base("a blue circle", 3))) for _ in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert len(runs) == 4 and all(run is runs[0] for run in runs)
    assert generator.sampler.rows_stepped == 2 * 6


@pytest.mark.skipif(sys.platform != "linux", reason="per-thread priorities are set on Linux only")
def test_the_unet_runs_at_a_lower_priority_than_requests(model):
    """The sampler's worker (where hooks run) steps aside for request threads; the caller keeps its priority."""
    seen = []

    def note_priority(step, output):
        seen.append(os.getpriority(os.PRIO_PROCESS, threading.get_native_id()))

    caller = os.getpriority(os.PRIO_PROCESS, threading.get_native_id())
    BatchedSampler(model, threading.RLock()).run(
        SamplingRun(model, "a red circle", 0, num_steps=2, guidance_scale=1.0, hooks=[EditHook("up_ft1", note_priority)]))
    assert seen and all(nice == max(caller, NICENESS) for nice in seen)
    assert os.getpriority(os.PRIO_PROCESS, threading.get_native_id()) == caller


def test_base_runs_are_kept_within_a_byte_budget(model, bundle):
    fresh = Bundle.load(bundle.root)
    fresh.attach_model(model)
    first = fresh.generator.base("a blue circle", 3)
    result = first.result
    tensors = [result.images, result.timesteps, first.traj, first.codes, *result.latents, *result.x0_predictions]
    assert first.nbytes == sum(t.numel() * t.element_size() for t in tensors) > 0
    budget = int(2.5 * first.nbytes)  # room for two runs of this size
    generator = Generator(fresh, model, cache_bytes=budget)
    for seed in range(4):
        generator.base("a blue circle", seed)
    guidance = generator.default_guidance
    assert generator.base_runs.keys() == [("a blue circle", 2, guidance), ("a blue circle", 3, guidance)]
    assert generator.base_runs.kept <= budget


def test_prompts_encode_consistently_from_many_threads_at_once(model):
    from backend.diffusion.sampler import check_prompts, encode_prompts

    failures = []

    def user(i):
        try:
            for _ in range(40):
                check_prompts(model, [f"a red circle {'star ' * (i % 3)}"])
                assert encode_prompts(model, ["a blue star", "a red circle in the center"]).shape[1] == model.tokenizer.model_max_length
        except Exception as err:  # noqa: BLE001  collected, then reported below
            failures.append(repr(err))

    threads = [threading.Thread(target=user, args=(i,)) for i in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert failures == []


def test_a_queued_run_hears_its_place_and_a_running_one_its_step(model):
    """Runs that do not fit the batch wait in line: each hears where it stands after every UNet call (progress.py)."""
    lock = threading.RLock()
    sampler = BatchedSampler(model, lock, max_rows=2)  # one guided run at a time
    heard: dict[str, list] = {"first": [], "second": []}

    def generate(name: str, steps: int) -> None:
        with reporting(heard[name].append):
            sampler.run(SamplingRun(model, "a star", num_steps=steps, guidance_scale=4.0))

    with lock:  # the sampler admits the first run, then waits for the model: the second queues behind it
        first = threading.Thread(target=generate, args=("first", 4))
        first.start()
        wait_until(lambda: sampler._worker is not None and not sampler._queue)
        second = threading.Thread(target=generate, args=("second", 3))
        second.start()
        wait_until(lambda: len(sampler._queue) == 1)
    for thread in (first, second):
        thread.join(timeout=60)
    running, queued = heard["first"][0], heard["second"][0]
    assert (running.place, running.step, running.steps, running.sharing) == (0, 1, 4, 0)
    assert (queued.place, queued.step, queued.steps) == (1, 0, 3)
    assert queued.seconds_left == pytest.approx(running.seconds_left * (3 + 3) / 3)  # its 3 steps after the first's last 3
    assert [s.step for s in heard["first"]] == [1, 2, 3] and [s.place for s in heard["second"]][-1] == 0  # then it steps itself


def wait_until(condition, timeout: float = 30.0) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.01)
