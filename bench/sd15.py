"""SD 1.5's architecture from its published configs, with random weights: the compute and sizes of the real model, no download.

    python -m bench.sd15 --out /tmp/sd15-256 [--side 256] [--prompts prompts.txt]

writes a model directory in the SD 1.5 layout (unet/, vae/, text_encoder/, tokenizer/,
scheduler/; weights as safetensors, fp32, 4.3 GB) that `python -m backend.build --model` and
`python app.py --model` load as they would the real weights. `--side` sets the UNet's default
image size (its config's sample_size × 8): 256 px puts up_ft1 at 16 × 16 × 1280. The tokenizer
knows only the words of `--prompts` (and the benchmarks' prompt): SD 1.5's vocabulary files
cannot be fetched here. Never commit the directory.
"""

import argparse
from pathlib import Path

import torch
from diffusers import AutoencoderKL, DDIMScheduler, UNet2DConditionModel
from transformers import CLIPTextConfig, CLIPTextModel

from backend.diffusion.models import DiffusionModel, save_model
from backend.diffusion.tokenizer import build_clip_tokenizer

WORDS = "a photograph of an astronaut riding a horse".split()


def sd15_model(device: torch.device, dtype: torch.dtype, tiny: bool = False, latent_size: int | None = None,
               words=WORDS) -> DiffusionModel:
    """SD 1.5's UNet, VAE and CLIP text encoder from config, random weights; `tiny`: widths / 8 at 128 px."""
    div = 8 if tiny else 1
    latent_size = latent_size or (16 if tiny else 64)
    groups = 8 if tiny else 32
    tokenizer = build_clip_tokenizer(sorted(set(words)), model_max_length=77)
    text_encoder = CLIPTextModel(CLIPTextConfig(
        vocab_size=49408, hidden_size=768 // div, intermediate_size=3072 // div, num_hidden_layers=12, num_attention_heads=12,
        max_position_embeddings=77, hidden_act="quick_gelu", bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id, pad_token_id=tokenizer.pad_token_id,
    ))
    unet = UNet2DConditionModel(
        sample_size=latent_size, in_channels=4, out_channels=4, layers_per_block=2, norm_num_groups=groups,
        block_out_channels=tuple(c // div for c in (320, 640, 1280, 1280)), cross_attention_dim=768 // div, attention_head_dim=8,
        down_block_types=("CrossAttnDownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D", "DownBlock2D"),
        up_block_types=("UpBlock2D", "CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "CrossAttnUpBlock2D"),
    )
    vae = AutoencoderKL(
        in_channels=3, out_channels=3, latent_channels=4, layers_per_block=2, norm_num_groups=groups, sample_size=8 * latent_size,
        block_out_channels=tuple(c // div for c in (128, 256, 512, 512)),
        down_block_types=("DownEncoderBlock2D",) * 4, up_block_types=("UpDecoderBlock2D",) * 4,
    )
    scheduler = DDIMScheduler(beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear", clip_sample=False,
                              set_alpha_to_one=False, steps_offset=1)
    for module in (unet, text_encoder, vae):
        module.to(device, dtype).eval().requires_grad_(False)
    return DiffusionModel(unet=unet, text_encoder=text_encoder, tokenizer=tokenizer, scheduler=scheduler, vae=vae)


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", required=True, help="directory to write the model to")
    parser.add_argument("--side", type=int, default=512, help="default image side in pixels (a multiple of 64)")
    parser.add_argument("--prompts", default=None, help="text file whose words the tokenizer should know")
    args = parser.parse_args(argv)
    if args.side % 64:
        parser.error("--side must be a multiple of 64 (the UNet halves the latent grid three times)")
    words = list(WORDS) + (Path(args.prompts).read_text().split() if args.prompts else [])
    torch.manual_seed(0)
    save_model(sd15_model(torch.device("cpu"), torch.float32, latent_size=args.side // 8, words=words), Path(args.out))
    print(f"wrote SD 1.5's architecture with random weights at {args.side} px to {args.out}")


if __name__ == "__main__":
    main()
