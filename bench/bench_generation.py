"""Generation at SD 1.5 scale: plain diffusers vs our sampler, capture, steering, prefix reuse, compiled UNet.

SD 1.5's architecture is built from its config with random weights (the compute is the real
model's): fp16 on CUDA, 512 px, 25 DDIM steps, CFG 7.5, batch 1. Every row is timed in the same
run and given as a ratio to the diffusers StableDiffusionPipeline. Steering adds a dense edit at
up_ft1 (1280 x 32 x 32) over 10 recorded steps, as a bundle's SteeringHook does; "prefix reuse"
starts from the cached latent of the base run at the window start, as the app does.
`--tiny` shrinks every width and the image (128 px) so the script can be checked on a CPU.
Usage: python -m bench.bench_generation [--device cuda] [--tiny] [--repeats 5] [--compile]
"""

import argparse
import statistics
import sys
from pathlib import Path

import torch
from diffusers import DDIMScheduler, StableDiffusionPipeline

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from backend.diffusion.collect import evenly_spaced_steps  # noqa: E402
from backend.diffusion.hooks import TrajectoryRecorder  # noqa: E402
from backend.diffusion.sampler import sample  # noqa: E402
from backend.diffusion.steering import SteeringHook  # noqa: E402
from bench.common import device_name, time_calls  # noqa: E402
from bench.sd15 import sd15_model  # noqa: E402

PROMPT = "a photograph of an astronaut riding a horse"
SITE = "up_ft1"


def synchronized(fn, device: torch.device):
    """`fn` followed by a CUDA sync, so wall-clock time covers the GPU work."""
    def call():
        fn()
        if device.type == "cuda":
            torch.cuda.synchronize(device)
    return call


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--tiny", action="store_true", help="widths / 8 at 128 px: a CPU check of the script")
    parser.add_argument("--steps", type=int, default=25)
    parser.add_argument("--guidance", type=float, default=7.5)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--compile", action="store_true", help="also time a torch.compile'd UNet")
    args = parser.parse_args()
    device = torch.device(args.device)
    dtype = torch.float16 if device.type == "cuda" else torch.float32
    model = sd15_model(device, dtype, args.tiny, words=PROMPT.split())
    recorded = evenly_spaced_steps(args.steps, 10)
    common = dict(num_steps=args.steps, guidance_scale=args.guidance)

    recorder = TrajectoryRecorder(SITE, recorded)
    base = sample(model, PROMPT, seed=0, hooks=[recorder], keep_latents=True, **common)
    traj = recorder.trajectories()[0]  # [P, T, C]
    deltas = 0.1 * torch.randn(len(recorded), traj.shape[0], traj.shape[2])

    def steered(start: int):
        hook = SteeringHook(SITE, deltas.clone(), recorded, (start, args.steps - 1))
        return lambda: sample(model, PROMPT, seed=0, hooks=[hook], start_step=start, start_latents=base.latents[start], **common)

    def captured():
        sample(model, PROMPT, seed=0, hooks=[TrajectoryRecorder(SITE, recorded)], **common).images

    pipe = StableDiffusionPipeline(vae=model.vae, text_encoder=model.text_encoder, tokenizer=model.tokenizer, unet=model.unet,
                                   scheduler=DDIMScheduler.from_config(model.scheduler.config), safety_checker=None,
                                   feature_extractor=None, requires_safety_checker=False)
    pipe.set_progress_bar_config(disable=True)
    rows = {
        "diffusers StableDiffusionPipeline": lambda: pipe(PROMPT, num_inference_steps=args.steps, guidance_scale=args.guidance,
                                                          generator=torch.Generator(device).manual_seed(0), output_type="pt"),
        "our sampler, unsteered": lambda: sample(model, PROMPT, seed=0, **common),
        f"our sampler + capture at {SITE} (10 steps)": captured,
        "steered, whole run": steered(0),
        f"steered, prefix reuse from step {args.steps * 2 // 5}": steered(args.steps * 2 // 5),
        f"steered, prefix reuse from step {args.steps * 3 // 5}": steered(args.steps * 3 // 5),
    }
    if args.compile:
        model.unet = torch.compile(model.unet, fullgraph=False)
        rows[f"compiled UNet, steered from step {args.steps * 3 // 5}"] = steered(args.steps * 3 // 5)

    print(f"device: {device_name()}; {'tiny widths, 128 px' if args.tiny else 'SD 1.5 widths, 512 px'}, {dtype}, {args.steps} DDIM steps, "
          f"CFG {args.guidance}, batch 1, median of {args.repeats}")
    medians = {}
    for name, fn in rows.items():
        medians[name] = statistics.median(time_calls(synchronized(fn, device), args.repeats))
        reference = medians["diffusers StableDiffusionPipeline"]
        print(f"{name:<48} {medians[name] * 1e3:9.1f} ms   {reference / medians[name]:5.2f}x vs diffusers")
    overhead = medians[f"our sampler + capture at {SITE} (10 steps)"] / medians["our sampler, unsteered"] - 1
    print(f"capture overhead at {SITE}: {overhead * 100:+.1f} %")


if __name__ == "__main__":
    main()
