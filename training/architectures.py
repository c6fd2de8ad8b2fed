"""Configurations of the tiny ShapesWorld models (Stable Diffusion layout and SD3 MM-DiT layout).

Every part is a stock diffusers / transformers class, so the shipped folders load with
``DiffusionPipeline.from_pretrained`` and run through the same code path as real checkpoints.

Design: 64×64 images; a VAE with 4× down-sampling to a 16×16×4 latent; a UNet with
cross-attention at 16×16 and 8×8 plus the 4×4 mid block; a CLIP text encoder trained jointly with
the UNet over a word-level BPE vocabulary; an SD3 transformer over 8×8 image tokens whose two CLIP
encoders are made from the UNet's.

Example:
    >>> unet = shapes_unet()                       # doctest: +SKIP
    >>> sum(p.numel() for p in unet.parameters())  # doctest: +SKIP
"""

from __future__ import annotations

IMAGE_SIZE = 64
LATENT_CHANNELS = 4
VAE_LEVELS = 3  # 2 ** (levels - 1) = 4× down-sampling: 64×64 images ↔ 16×16 latents
LATENT_SIDE = IMAGE_SIZE >> (VAE_LEVELS - 1)
TEXT_WIDTH = 128
MAX_TOKENS = 24  # the longest ShapesWorld caption is 16 words; 24 leaves room for BOS/EOS


def shapes_tokenizer():
    from attnscope.datasets.shapes import vocabulary
    from attnscope.tokenizer import word_bpe_tokenizer

    return word_bpe_tokenizer(vocabulary(), max_length=MAX_TOKENS)


def token_ids(tokenizer, captions: list[str]):
    """Token ids padded to ``MAX_TOKENS``, as every ShapesWorld model reads its captions.

        ids = token_ids(shapes_tokenizer(), ["a red circle", ""])   # (2, 24)
    """
    return tokenizer(captions, padding="max_length", max_length=MAX_TOKENS, truncation=True,
                     return_tensors="pt").input_ids


def shapes_vae():
    """The ShapesWorld VAE: 3 resolutions (4× down-sampling), 64×64×3 images ↔ 16×16×4 latents."""
    from diffusers import AutoencoderKL

    return AutoencoderKL(
        in_channels=3, out_channels=3, latent_channels=LATENT_CHANNELS,
        block_out_channels=(32,) + (64,) * (VAE_LEVELS - 1), down_block_types=("DownEncoderBlock2D",) * VAE_LEVELS,
        up_block_types=("UpDecoderBlock2D",) * VAE_LEVELS, layers_per_block=1, norm_num_groups=16,
        sample_size=IMAGE_SIZE,
    )


def clip_text_config(vocab_size: int, width: int):
    """A small CLIP text-encoder config over the word-level vocabulary (specials are the last two ids)."""
    from transformers import CLIPTextConfig

    return CLIPTextConfig(
        vocab_size=vocab_size, hidden_size=width, intermediate_size=4 * width, num_hidden_layers=3,
        num_attention_heads=4, max_position_embeddings=MAX_TOKENS, projection_dim=width,
        bos_token_id=vocab_size - 2, eos_token_id=vocab_size - 1, pad_token_id=vocab_size - 1,
    )


def shapes_text_encoder(vocab_size: int):
    from transformers import CLIPTextModel

    return CLIPTextModel(clip_text_config(vocab_size, TEXT_WIDTH))


def shapes_unet():
    from diffusers import UNet2DConditionModel

    return UNet2DConditionModel(
        sample_size=LATENT_SIDE, in_channels=LATENT_CHANNELS, out_channels=LATENT_CHANNELS, layers_per_block=1,
        block_out_channels=(48, 96, 96),
        down_block_types=("CrossAttnDownBlock2D", "CrossAttnDownBlock2D", "DownBlock2D"),
        up_block_types=("UpBlock2D", "CrossAttnUpBlock2D", "CrossAttnUpBlock2D"),
        cross_attention_dim=TEXT_WIDTH, attention_head_dim=4, norm_num_groups=16,
    )


def shapes_scheduler():
    from diffusers import DDIMScheduler

    return DDIMScheduler(
        num_train_timesteps=1000, beta_schedule="scaled_linear", beta_start=0.00085, beta_end=0.012,
        clip_sample=False, set_alpha_to_one=False, steps_offset=1, prediction_type="epsilon",
    )


# -- MM-DiT (Stable Diffusion 3 layout) ------------------------------------------------------------
#: SD3 pipelines append this many all-zero "T5" tokens when no T5 encoder is present (diffusers' default).
SD3_ZERO_TOKENS = 256
SD3_CLIP_WIDTH = TEXT_WIDTH  # both CLIP encoders are made from the UNet's text encoder
#: SD3 reads the penultimate CLIP layer; one extra layer makes that the UNet encoder's last one.
SD3_CLIP_LAYERS = 4
SD3_PATCH = 2  # 16×16 latent → 8×8 image tokens
SD3_HEADS, SD3_HEAD_DIM, SD3_BLOCKS = 4, 32, 8


def shapes_sd3_text_encoder(vocab_size: int):
    from transformers import CLIPTextModelWithProjection

    config = clip_text_config(vocab_size, SD3_CLIP_WIDTH)
    config.num_hidden_layers = SD3_CLIP_LAYERS
    return CLIPTextModelWithProjection(config)


def shapes_sd3_transformer(patch: int = SD3_PATCH, heads: int = SD3_HEADS, blocks: int = SD3_BLOCKS):
    """The SD3 transformer over the VAE's 16×16×4 latents; ``patch``, ``heads`` (of width 32) and
    ``blocks`` set its size (the defaults are the shipped model's; tests use smaller ones).

    >>> shapes_sd3_transformer().config.num_layers
    8
    """
    from diffusers import SD3Transformer2DModel

    if LATENT_SIDE % patch:
        raise ValueError(f"patch {patch} does not divide the {LATENT_SIDE}×{LATENT_SIDE} latent; use a divisor of {LATENT_SIDE}.")
    return SD3Transformer2DModel(
        sample_size=LATENT_SIDE, patch_size=patch, in_channels=LATENT_CHANNELS, out_channels=LATENT_CHANNELS,
        num_layers=blocks, attention_head_dim=SD3_HEAD_DIM, num_attention_heads=heads,
        joint_attention_dim=2 * SD3_CLIP_WIDTH, caption_projection_dim=heads * SD3_HEAD_DIM,
        pooled_projection_dim=2 * SD3_CLIP_WIDTH, pos_embed_max_size=LATENT_SIDE,
    )


def shapes_flow_scheduler():
    from diffusers import FlowMatchEulerDiscreteScheduler

    return FlowMatchEulerDiscreteScheduler(num_train_timesteps=1000, shift=1.0)
