"""DDIM inversion and runs held on its path: an uploaded image becomes a run that reproduces it."""

from dataclasses import replace

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
import torch
from diffusers import DDIMScheduler
from PIL import Image

from backend.diffusion.inversion import InversionRun
from backend.diffusion.sampler import SamplingRun, encode_pixels, image_size, encode_prompts, make_scheduler, pixels, psnr, sample, step_together
from backend.errors import ExplorerError
from backend.serving.generation import FAITHFUL_PSNR, Generator
from tests.tiny_models import tiny_model

STEPS = 6


def run_to_end(model, run):
    while not run.done:
        step_together(model, [run])
    return run.result()


@pytest.fixture(scope="module")
def model():
    return tiny_model(prediction_type="v_prediction")


@pytest.fixture(scope="module")
def image(model) -> Image.Image:
    return Image.fromarray((sample(model, "a red star", 3, num_steps=STEPS).images[0].permute(1, 2, 0) * 255).byte().numpy())


@torch.inference_mode()
def test_inversion_walks_x0_up_the_sampler_schedule(model, image):
    x0 = encode_pixels(model, pixels(image, *image_size(model)))
    states = run_to_end(model, InversionRun(model, x0, "a red star", STEPS))
    assert len(states) == STEPS + 1 and torch.equal(states[-1], x0)
    timesteps = make_scheduler(model, STEPS).timesteps  # the sampler's, noisiest first
    alphas = model.scheduler.alphas_cumprod
    text = encode_prompts(model, ["a red star"])
    for i in range(STEPS - 1):  # independently: DDIM's update solved for the noisier state, v-prediction written out
        x, t, t_below = states[i + 1], timesteps[i], timesteps[i + 1]
        v = model.unet(x, t, encoder_hidden_states=text).sample
        a_below, a = alphas[t_below], alphas[t]
        x0_pred, eps = a_below.sqrt() * x - (1 - a_below).sqrt() * v, a_below.sqrt() * v + (1 - a_below).sqrt() * x
        assert torch.allclose(states[i], a.sqrt() * x0_pred + (1 - a).sqrt() * eps, atol=1e-5)


@torch.inference_mode()
def test_a_run_held_on_a_path_keeps_what_each_step_missed_and_replaying_that_retraces_the_path(model, image):
    states = run_to_end(model, InversionRun(model, encode_pixels(model, pixels(image, *image_size(model))), "", STEPS))
    held = run_to_end(model, SamplingRun(model, "", 0, num_steps=STEPS, guidance_scale=7.5, start_latents=states[0], follow=states,
                                         keep_latents=True))
    assert all(torch.equal(a, b) for a, b in zip(held.latents, states)) and len(held.corrections) == STEPS
    assert max(float(c.abs().max()) for c in held.corrections) > 1e-3  # plain DDIM at guidance 7.5 does leave the path
    plain = run_to_end(model, SamplingRun(model, "", 0, num_steps=STEPS, guidance_scale=7.5, start_latents=states[0]))
    assert not torch.allclose(plain.images, held.images, atol=1e-2)
    for start in (0, 3):  # replayed from the start or from a later step, the corrections lead back to the image
        replayed = run_to_end(model, SamplingRun(model, "", 0, num_steps=STEPS, guidance_scale=7.5, start_step=start,
                                                 start_latents=states[start], corrections=held.corrections))
        assert torch.allclose(replayed.images, held.images, atol=1e-5)
    with pytest.raises(ExplorerError, match="one tensor per sampler step"):
        SamplingRun(model, "", 0, num_steps=STEPS, start_latents=states[0], corrections=held.corrections[:2])
    with pytest.raises(ExplorerError, match="starts at step 0"):
        SamplingRun(model, "", 0, num_steps=STEPS, start_step=3, start_latents=states[3], follow=states)
    with pytest.raises(ExplorerError, match="makes its own corrections"):
        SamplingRun(model, "", 0, num_steps=STEPS, start_latents=states[0], follow=states, corrections=held.corrections)


def test_a_scheduler_whose_timesteps_the_inverse_cannot_lay_out_is_refused_with_its_spacing(model):
    linspace = replace(model, scheduler=DDIMScheduler.from_config(model.scheduler.config, timestep_spacing="linspace"))
    with pytest.raises(ExplorerError, match="'linspace'"):
        InversionRun(linspace, torch.zeros(1, 3, 16, 16), "", STEPS)


def test_an_upload_through_a_lossy_vae_says_it_is_not_faithful(tiny_bundle, image):
    lossy = Generator(tiny_bundle, tiny_model(with_vae=True))  # a random VAE cannot give the picture back
    run = lossy.invert(image)
    assert run.fidelity == pytest.approx(psnr(run.result.images[0], pixels(image, 32, 32)))
    assert run.fidelity < FAITHFUL_PSNR and not run.faithful


def test_psnr_is_ten_log10_of_one_over_the_mean_squared_error():
    a, b = torch.zeros(3, 4, 4), torch.full((3, 4, 4), 0.1)
    assert psnr(a, b) == pytest.approx(20.0) and psnr(a, a) == 100.0


@settings(max_examples=8, deadline=None)
@given(width=st.integers(1, 80), height=st.integers(1, 80), mode=st.sampled_from(["RGB", "RGBA", "L", "P"]))
def test_an_upload_of_any_size_aspect_or_mode_is_resized_to_the_model_and_reconstructed(tiny_bundle, width, height, mode):
    image = Image.effect_noise((width, height), 64).convert(mode)
    run = tiny_bundle.generator.invert(image)
    assert run.result.images.shape == (1, 3, 16, 16) and run.faithful  # the pixel-space model reproduces what it was given
    assert torch.allclose(run.result.images[0], pixels(image, 16, 16), atol=1e-5)
