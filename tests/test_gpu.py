"""The CUDA paths against the CPU ones; skipped on machines without a GPU."""

import pytest
import torch

from backend.diffusion.hooks import TrajectoryRecorder
from backend.diffusion.sampler import sample
from backend.diffusion.steering import SteeringHook
from backend.method.sae import TopKSAE
from backend.method.sae_train import SAETrainConfig, SAETrainer
from tests.tiny_models import tiny_model

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")


def on(device):
    model = tiny_model(with_vae=True)
    for module in (model.unet, model.text_encoder, model.vae):
        module.to(device)
    return model


def test_capture_and_steering_on_cuda_match_the_cpu():
    results = []
    for device in ("cpu", "cuda"):
        recorder = TrajectoryRecorder("up_ft1", [0, 2])
        deltas = torch.linspace(-1, 1, 2 * 64 * 16).reshape(2, 64, 16)
        hook = SteeringHook("up_ft1", deltas, [0, 2], (1, 3))
        result = sample(on(device), "a red circle", seed=3, num_steps=4, guidance_scale=3.0, hooks=[recorder, hook])
        results.append((result.images, recorder.trajectories()))
    (images_cpu, traj_cpu), (images_gpu, traj_gpu) = results
    assert traj_gpu.device.type == "cpu"
    assert torch.allclose(traj_cpu, traj_gpu, atol=1e-3) and torch.allclose(images_cpu, images_gpu, atol=1e-3)


def test_fast_sae_step_on_cuda_equals_the_reference():
    torch.manual_seed(0)
    sae = TopKSAE(64, 1024, 8).cuda()
    trainer = SAETrainer(sae, SAETrainConfig(n_latents=1024, k=8))
    x, dead = torch.randn(512, 64, device="cuda"), torch.rand(1024, device="cuda") < 0.3
    outputs = []
    for losses in (trainer._losses_fast, trainer._losses_reference):
        sae.zero_grad()
        fvu, aux, _ = losses(x, dead)
        (fvu + aux).backward()
        outputs.append((fvu.item(), aux.item(), sae.W_dec.grad.clone()))
    (fvu_f, aux_f, grad_f), (fvu_r, aux_r, grad_r) = outputs
    assert fvu_f == pytest.approx(fvu_r, rel=1e-4) and aux_f == pytest.approx(aux_r, rel=1e-4)
    assert torch.allclose(grad_f, grad_r, atol=1e-5)
