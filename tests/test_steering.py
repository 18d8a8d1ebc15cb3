import math
import threading

import pytest
import torch

from backend.diffusion.hooks import site_module
from backend.diffusion.steering import Steer, SteeringHook, interpolate_over_steps, steering_deltas
from backend.errors import ExplorerError


def strongest_latent(bundle, prompt="a red circle", seed=0):
    return int(bundle.generator.base(prompt, seed).codes.sum(0).argmax())


def test_scale_mode_with_alpha_one_reproduces_the_base_image_exactly(tiny_bundle):
    j = strongest_latent(tiny_bundle)
    result = tiny_bundle.generate("a red circle", 0, [Steer(j, 1.0, "scale")])
    assert torch.equal(result.steered_images, tiny_bundle.generator.base("a red circle", 0).result.images)


def test_add_mode_changes_the_image(tiny_bundle):
    result = tiny_bundle.generate("a red circle", 0, [Steer(strongest_latent(tiny_bundle), 20.0, "add")])
    assert not torch.equal(result.steered_images, tiny_bundle.generator.base("a red circle", 0).result.images)


def test_ablation_edit_lowers_the_latent_where_it_fired(tiny_bundle):
    j = strongest_latent(tiny_bundle)
    base = tiny_bundle.generator.base("a red circle", 0)
    fired = base.codes[:, j] > 0
    deltas = steering_deltas([Steer(j, 0.0, "scale")], tiny_bundle.feature_trajectories, tiny_bundle.typical_activation,
                             base.codes, torch.ones(base.codes.shape[0]))  # [T, P, C]
    edited = base.traj + deltas.permute(1, 0, 2)  # the recorded trajectory with the edit applied
    pre = lambda traj: tiny_bundle.sae.pre_activations(tiny_bundle.encoding.to_rows(traj))[:, j]  # noqa: E731
    assert (pre(edited)[fired] < pre(base.traj)[fired]).all()
    assert torch.equal(edited[~fired], base.traj[~fired])  # z = 0 there: nothing to remove


def test_the_edit_goes_to_the_conditional_rows_only():
    deltas = torch.arange(2 * 4 * 3, dtype=torch.float32).reshape(2, 4, 3)  # [T, P = 2x2, C]
    hook = SteeringHook("up_ft1", deltas, recorded_steps=[0, 2], window=(1, 2))
    output = torch.randn(4, 3, 2, 2)  # CFG batch of two images: unconditional rows 0-1, conditional rows 2-3
    edited = hook(2, output, slice(2, 4))
    assert torch.equal(edited[:2], output[:2])
    expected = output[2:] + deltas[1].T.reshape(1, 3, 2, 2)
    assert torch.equal(edited[2:], expected)
    assert hook(1, output, slice(2, 4)) is not None and hook(0, output, slice(2, 4)) is None  # outside the window


def test_steps_before_the_window_are_not_recomputed(tiny_bundle):
    tiny_bundle.generator.base("a blue star", 1)  # warm the base cache
    calls = []
    handle = site_module(tiny_bundle.generator.model.unet, "bottleneck").register_forward_hook(lambda *a: calls.append(1))
    try:
        tiny_bundle.generate("a blue star", 1, [Steer(strongest_latent(tiny_bundle, "a blue star", 1), 3.0)], window=(4, 5))
    finally:
        handle.remove()
    assert len(calls) == 2  # steps 4 and 5 only


@pytest.mark.parametrize("mask", ["all", [[1.0, 0.0], [0.0, 0.5]]])
def test_a_steer_of_a_fresh_seed_samples_its_base_beside_it_and_matches_the_steer_from_the_finished_base(monkeypatch, tiny_bundle, mask):
    generator, steers = tiny_bundle.generator, [Steer(strongest_latent(tiny_bundle), 6.0), Steer(1, -2.0)]
    seed = 700 + len(str(mask))  # a (prompt, seed) no other test sampled
    calls, rows, sampler = generator.sampler.calls, generator.sampler.rows_stepped, generator.sampler
    submitted, run, result = threading.Semaphore(0), sampler.run, {}
    monkeypatch.setattr(sampler, "run", lambda r: submitted.release() or run(r))
    steer = threading.Thread(target=lambda: result.update(beside=tiny_bundle.generate("a green star", seed, steers, mask=mask)))
    with sampler.model_lock:  # both runs are queued before the first UNet call
        steer.start()
        assert all(submitted.acquire(timeout=30) for _ in range(2))
    steer.join()
    beside = result["beside"]
    assert generator.sampler.rows_stepped - rows == 2 * 2 * generator.num_steps  # two guided runs, each step once
    assert generator.sampler.calls - calls <= generator.num_steps + 1  # in the same UNet calls (one joins at the next step)
    after = generator._steer(generator.base("a green star", seed), steers, (0, generator.num_steps - 1), mask)  # from the kept base
    assert torch.allclose(beside.steered_images, after.steered_images, atol=1e-5)
    assert torch.equal(beside.base_run.result.images, generator.base("a green star", seed).result.images)
    assert beside.base == after.base


@pytest.mark.parametrize("steers, window, mask", [([Steer(2, 0.5, "scale")], (0, 5), "all"), ([Steer(2, 3.0)], (1, 5), "all"),
                                                  ([Steer(2, 3.0)], (0, 5), "fired")])
def test_a_steer_that_reads_its_base_waits_for_it(tiny_bundle, steers, window, mask):
    generator, calls = tiny_bundle.generator, tiny_bundle.generator.sampler.calls
    tiny_bundle.generate("a blue square", 800 + generator.sampler.calls, steers, window=window, mask=mask)
    assert generator.sampler.calls - calls == generator.num_steps + (generator.num_steps - window[0])  # one run after the other


def test_fired_mask_edits_only_where_the_latent_fired(tiny_bundle):
    j = strongest_latent(tiny_bundle)
    run = tiny_bundle.generator.base("a red circle", 0)
    mask = tiny_bundle.generator._mask("fired", [Steer(j, 1.0)], run)
    assert torch.equal(mask.bool(), run.codes[:, j] > 0)
    region = torch.zeros(8, 8)
    region[:4, :4] = 1
    assert tiny_bundle.generator._mask(region.numpy(), [Steer(j, 1.0)], run).sum() == 16


@pytest.mark.parametrize("strength", [math.nan, math.inf, 1e9, "3"])
def test_bad_strengths_are_rejected(strength):
    with pytest.raises(ExplorerError, match="strength"):
        Steer(0, strength)


def test_bad_requests_are_rejected_and_change_nothing(tiny_bundle):
    cached = len(tiny_bundle.generator.base_runs)
    bad_requests = (dict(steering=[Steer(999, 1.0)]), dict(steering=[], window=(3, 1)), dict(steering=[], mask="somewhere"),
                    dict(steering=[{"latent": 1, "alpha": 2}]), dict(steering=[], mask=[[0, 1], [1]]),
                    dict(steering=[], mask=[[float("nan")]]), dict(steering=[], window=5))
    for bad in bad_requests:
        with pytest.raises(ExplorerError):
            tiny_bundle.generate("a red circle", 0, **bad)
    with pytest.raises(ExplorerError, match="empty"):
        tiny_bundle.generate("", 0, [])
    with pytest.raises(ExplorerError, match="mode"):
        Steer(1, 1.0, "multiply")
    assert len(tiny_bundle.generator.base_runs) == cached


def test_interpolation_between_recorded_steps_is_linear():
    values = torch.tensor([[0.0], [10.0], [20.0]])
    assert interpolate_over_steps(values, [0, 4, 8], 2).item() == 5.0
    assert interpolate_over_steps(values, [0, 4, 8], 4).item() == 10.0
    assert interpolate_over_steps(values, [2, 4, 8], 0).item() == 0.0
    assert interpolate_over_steps(values, [0, 4, 8], 9).item() == 20.0


def test_maps_over_time_are_topk_codes_of_the_prefixes_and_end_in_the_codes(tiny_bundle):
    run = tiny_bundle.generator.base("a green square", 2)
    everyone = list(range(tiny_bundle.n_latents))
    maps = tiny_bundle.generator.maps_over_time(run, everyone)  # [n, T, 8, 8]
    assert maps.shape == (tiny_bundle.n_latents, 3, 8, 8)
    assert torch.equal(maps[:, -1].flatten(1).T, run.codes)  # exactly the codes at the last step
    rows = tiny_bundle.encoding.to_rows(run.traj).reshape(64, 3, -1)
    for t in range(3):  # independently: zero the later blocks and encode with the SAE itself
        prefix = rows.clone()
        prefix[:, t + 1 :] = 0
        expected = tiny_bundle.sae.encode(prefix.flatten(1)).detach()
        assert torch.allclose(maps[:, t].flatten(1).T, expected, atol=1e-5)
        assert ((maps[:, t].flatten(1) > 0).sum(0) <= tiny_bundle.sae.k).all()  # TopK: at most k latents per position
    j = strongest_latent(tiny_bundle, "a green square", 2)
    assert torch.equal(tiny_bundle.generator.maps_over_time(run, [j])[0], maps[j])


def test_an_uploaded_image_gets_codes_and_maps_from_the_run_that_reproduces_it(tiny_bundle):
    generated = tiny_bundle.generator.base("a blue circle", 4)
    uploaded = tiny_bundle.generator.invert(generated.image, prompt="a blue circle")
    assert uploaded.traj.shape == generated.traj.shape
    assert uploaded.codes.shape == generated.codes.shape and ((uploaded.codes > 0).sum(1) <= 4).all()
    assert torch.allclose(uploaded.result.images, generated.result.images, atol=1 / 255)
    assert tiny_bundle.generator.maps_over_time(uploaded, [0, 1]).shape == (2, 3, 8, 8)


def test_x0_images_are_given_for_each_recorded_step(tiny_bundle):
    run = tiny_bundle.generator.base("a red star", 5)
    frames = tiny_bundle.generator.x0_images(run)
    assert len(frames) == 3 and frames[-1].size == (16, 16)
