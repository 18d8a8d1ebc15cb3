"""Tiny SD-architecture models built from config, for tests that must not download anything."""

import torch
from diffusers import AutoencoderKL, DDIMScheduler, UNet2DConditionModel
from transformers import CLIPTextConfig, CLIPTextModel

from backend.diffusion.models import DiffusionModel
from backend.diffusion.tokenizer import build_clip_tokenizer

WORDS = "a an the red green blue circle square star in on top left right bottom center".split()


def tiny_model(with_vae: bool = False, prediction_type: str = "epsilon", seed: int = 0) -> DiffusionModel:
    """A random-weight model with SD 1.5's block structure (4 down, 4 up, cross-attention)."""
    torch.manual_seed(seed)
    tokenizer = build_clip_tokenizer(WORDS, model_max_length=12)
    text_encoder = CLIPTextModel(CLIPTextConfig(
        vocab_size=len(tokenizer), hidden_size=32, intermediate_size=64, num_hidden_layers=2,
        num_attention_heads=2, max_position_embeddings=tokenizer.model_max_length,
        bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id, pad_token_id=tokenizer.pad_token_id,
    ))
    channels = 4 if with_vae else 3
    unet = UNet2DConditionModel(
        sample_size=16, in_channels=channels, out_channels=channels, layers_per_block=1,
        block_out_channels=(8, 16, 16, 16), norm_num_groups=4, cross_attention_dim=32, attention_head_dim=2,
        down_block_types=("DownBlock2D", "DownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D"),
        up_block_types=("CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "UpBlock2D", "UpBlock2D"),
    )
    vae = AutoencoderKL(
        in_channels=3, out_channels=3, latent_channels=4, block_out_channels=(8, 8), norm_num_groups=4,
        down_block_types=("DownEncoderBlock2D",) * 2, up_block_types=("UpDecoderBlock2D",) * 2,
    ) if with_vae else None
    scheduler = DDIMScheduler(
        beta_schedule="scaled_linear", beta_start=0.00085, beta_end=0.012, clip_sample=False,
        prediction_type=prediction_type, set_alpha_to_one=False,
    )
    for module in (unet, text_encoder, vae):
        if module is not None:
            module.eval().requires_grad_(False)
    return DiffusionModel(unet=unet, text_encoder=text_encoder, tokenizer=tokenizer, scheduler=scheduler, vae=vae)


