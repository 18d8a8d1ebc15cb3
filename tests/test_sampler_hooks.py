import pytest
import torch

from backend.diffusion.hooks import EditHook, TrajectoryRecorder, site_module
from backend.diffusion.sampler import sample
from backend.errors import ExplorerError
from tests.tiny_models import tiny_model

SITE_SHAPES = {  # tiny UNet: 16x16 input, channels (8, 16, 16, 16)
    "bottleneck": (4, 16),
    "up_ft0": (16, 16),
    "up_ft1": (64, 16),
    "up_ft2": (256, 16),
    "up_ft3": (256, 8),
}


@pytest.fixture(scope="module")
def model():
    return tiny_model()


def test_capture_returns_each_site_at_each_recorded_step(model):
    recorders = [TrajectoryRecorder(site, (0, 2, 3)) for site in SITE_SHAPES]
    sample(model, ["a red circle", "a blue star"], seed=0, num_steps=4, guidance_scale=3.0, hooks=recorders)
    for recorder in recorders:
        positions, channels = SITE_SHAPES[recorder.site]
        assert recorder.trajectories().shape == (2, positions, 3, channels)


def test_capture_keeps_the_conditional_half_of_the_cfg_batch(model):
    with_cfg = TrajectoryRecorder("up_ft1", (0,))
    without_cfg = TrajectoryRecorder("up_ft1", (0,))
    sample(model, "a red circle", seed=3, num_steps=2, guidance_scale=5.0, hooks=[with_cfg])
    sample(model, "a red circle", seed=3, num_steps=2, guidance_scale=1.0, hooks=[without_cfg])
    # At step 0 both runs see the same noise; only the conditional rows of the CFG batch match the plain run.
    assert torch.allclose(with_cfg.trajectories(), without_cfg.trajectories(), atol=1e-5)


def test_hooks_are_removed_when_sampling_raises(model):
    def explode(step, output):
        if step == 1:
            raise RuntimeError("boom")
        return None

    module = site_module(model.unet, "up_ft1")
    before = len(module._forward_hooks)
    with pytest.raises(RuntimeError, match="boom"):
        sample(model, "a red circle", num_steps=3, guidance_scale=2.0, hooks=[EditHook("up_ft1", explode)])
    assert len(module._forward_hooks) == before


def test_edit_hook_changes_the_image_only_from_its_step_on(model):
    base = sample(model, "a red circle", seed=1, num_steps=4, guidance_scale=3.0, keep_latents=True)
    edit = EditHook("up_ft1", lambda step, out: out + 5.0 if step >= 2 else None)
    edited = sample(model, "a red circle", seed=1, num_steps=4, guidance_scale=3.0, hooks=[edit], keep_latents=True)
    assert torch.equal(edited.latents[2], base.latents[2])
    assert not torch.allclose(edited.images, base.images)


def test_starting_from_a_cached_latent_reproduces_the_full_run(model):
    base = sample(model, ["a red circle", "a star"], seed=7, num_steps=5, guidance_scale=3.0, keep_latents=True)
    resumed = sample(model, ["a red circle", "a star"], seed=7, num_steps=5, guidance_scale=3.0, start_step=3, start_latents=base.latents[3])
    assert torch.equal(resumed.images, base.images)


def test_seed_fixes_each_image_independently_of_its_batch(model):
    pair = sample(model, ["a red circle", "a star"], seed=[10, 11], num_steps=3, guidance_scale=2.0)
    alone = sample(model, ["a star"], seed=[11], num_steps=3, guidance_scale=2.0)
    assert torch.allclose(pair.images[1], alone.images[0], atol=1e-5)


def test_v_prediction_scheduler_config_is_followed():
    eps, v = tiny_model(prediction_type="epsilon"), tiny_model(prediction_type="v_prediction")
    assert not torch.allclose(sample(eps, "a star", num_steps=3).images, sample(v, "a star", num_steps=3).images)


def test_latent_space_model_decodes_through_its_vae():
    result = sample(tiny_model(with_vae=True), "a star", num_steps=2, keep_x0=True)
    assert result.images.shape == (1, 3, 32, 32)
    assert len(result.x0_predictions) == 2
    assert 0 <= result.images.min() and result.images.max() <= 1


@pytest.mark.parametrize("prompt, message", [("", "empty"), ("   ", "empty"), ("a red circle " * 10, "tokens long")])
def test_bad_prompts_are_rejected_with_a_clear_message(model, prompt, message):
    from backend.diffusion.sampler import check_prompts

    with pytest.raises(ExplorerError, match=message):
        check_prompts(model, [prompt])


def test_unknown_site_is_a_clear_error(model):
    with pytest.raises(ExplorerError, match="Unknown site"):
        sample(model, "a star", num_steps=2, hooks=[TrajectoryRecorder("down_ft9", (0,))])
