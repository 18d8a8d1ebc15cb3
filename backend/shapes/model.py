"""The shapes text-to-image model: a small pixel-space UNet, a small CLIP text encoder, a v-prediction DDIM schedule."""

from dataclasses import dataclass

from diffusers import DDIMScheduler, UNet2DConditionModel
from transformers import CLIPTextConfig, CLIPTextModel, CLIPTokenizer


@dataclass
class ModelConfig:
    """Sizes of the shapes model; the defaults are the shipped model."""

    image_size: int = 32
    block_out_channels: tuple[int, ...] = (32, 64, 128, 128)
    attention_heads: int = 4
    norm_groups: int = 8  # 32 groups (the diffusers default) would leave 1 channel per group at 32 channels
    text_hidden: int = 128
    text_layers: int = 3
    text_heads: int = 4
    beta_schedule: str = "squaredcos_cap_v2"


def build_unet(config: ModelConfig) -> UNet2DConditionModel:
    """The UNet: 4 resolutions (32, 16, 8, 4 px), cross-attention only at 8x8 and 4x4, where it is cheap."""
    return UNet2DConditionModel(
        sample_size=config.image_size,
        in_channels=3,
        out_channels=3,
        down_block_types=("DownBlock2D", "DownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D"),
        up_block_types=("CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "UpBlock2D", "UpBlock2D"),
        block_out_channels=config.block_out_channels,
        layers_per_block=1,
        norm_num_groups=config.norm_groups,
        cross_attention_dim=config.text_hidden,
        attention_head_dim=config.attention_heads,  # diffusers' legacy name: this is the number of heads
    )


def build_text_encoder(config: ModelConfig, tokenizer: CLIPTokenizer) -> CLIPTextModel:
    """A small CLIP text encoder over the tokenizer's vocabulary."""
    text_config = CLIPTextConfig(
        vocab_size=len(tokenizer),
        hidden_size=config.text_hidden,
        intermediate_size=4 * config.text_hidden,
        num_hidden_layers=config.text_layers,
        num_attention_heads=config.text_heads,
        max_position_embeddings=tokenizer.model_max_length,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
    )
    return CLIPTextModel(text_config)


def build_scheduler(config: ModelConfig) -> DDIMScheduler:
    """DDIM with v-prediction, zero terminal SNR and trailing timesteps.

    With eps-prediction the model never sees pure noise in training yet starts from it at
    sampling time, and drew bright backgrounds where dark ones were asked for; zero-SNR
    v-prediction removes that mismatch.
    """
    return DDIMScheduler(
        num_train_timesteps=1000,
        beta_schedule=config.beta_schedule,
        prediction_type="v_prediction",
        rescale_betas_zero_snr=True,
        timestep_spacing="trailing",
        clip_sample=False,
        set_alpha_to_one=False,
    )
