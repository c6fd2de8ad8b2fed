"""Configurations of the tiny ShapesWorld models (Stable Diffusion layout and SD3 MM-DiT layout).

Every part is a stock diffusers / transformers class, so the shipped folders load with
``DiffusionPipeline.from_pretrained`` and run through the same code path as real checkpoints.

Design (measured choices are in docs/models.md): 64×64 images; a VAE with 4× down-sampling to a
16×16×4 latent; a UNet with cross-attention at 16×16 and 8×8 plus the 4×4 mid block; a CLIP text
encoder trained jointly with the denoiser over a word-level BPE vocabulary.

Example:
    >>> unet = shapes_unet()                       # doctest: +SKIP
    >>> sum(p.numel() for p in unet.parameters())  # doctest: +SKIP
"""

from __future__ import annotations

IMAGE_SIZE = 64
LATENT_CHANNELS = 4
VAE_LEVELS = 3  # 2 ** (levels - 1) = 4× down-sampling: 64×64 images ↔ 16×16 latents
TEXT_WIDTH = 128
#: (channels, side) of the shipped VAE's latents: each VAE level after the first halves the side
SHIPPED_LATENT = (LATENT_CHANNELS, IMAGE_SIZE >> (VAE_LEVELS - 1))
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


def shapes_vae(levels: int = VAE_LEVELS, latent_channels: int = LATENT_CHANNELS):
    """The ShapesWorld VAE: ``levels`` resolutions (2 ** (levels - 1) down-sampling), ``latent_channels`` deep.

    The shipped UNet's VAE is the default (3 levels, 4 channels: 16×16×4 latents); ``levels=4`` gives
    8×8 latents, the down-sampling of Stable Diffusion's and SD3's VAEs.
    """
    from diffusers import AutoencoderKL

    if not 2 <= levels <= 5 or latent_channels < 1:
        raise ValueError(f"A ShapesWorld VAE has 2–5 levels and at least one latent channel, not {levels} and {latent_channels}.")
    widths = (32,) + (64,) * (levels - 1)
    return AutoencoderKL(
        in_channels=3, out_channels=3, latent_channels=latent_channels,
        block_out_channels=widths, down_block_types=("DownEncoderBlock2D",) * levels,
        up_block_types=("UpDecoderBlock2D",) * levels, layers_per_block=1, norm_num_groups=16,
        sample_size=IMAGE_SIZE,
    )


def latent_shape(vae) -> tuple[int, int]:
    """``(channels, side)`` of the latents a VAE makes from an ``IMAGE_SIZE`` image."""
    return vae.config.latent_channels, IMAGE_SIZE >> (len(vae.config.block_out_channels) - 1)


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

    latent = IMAGE_SIZE // 2 ** (VAE_LEVELS - 1)
    return UNet2DConditionModel(
        sample_size=latent, in_channels=LATENT_CHANNELS, out_channels=LATENT_CHANNELS, layers_per_block=1,
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
# Design 3 (shipped; docs/models.md): 8×8 image tokens, 8 blocks of width 128. Design 2 was patch 1, 3 heads, 4 blocks.
SD3_PATCH = 2  # 16×16 latent → 8×8 image tokens
SD3_HEADS, SD3_HEAD_DIM, SD3_BLOCKS = 4, 32, 8


def shapes_sd3_text_encoder(vocab_size: int):
    from transformers import CLIPTextModelWithProjection

    config = clip_text_config(vocab_size, SD3_CLIP_WIDTH)
    config.num_hidden_layers = SD3_CLIP_LAYERS
    return CLIPTextModelWithProjection(config)


def shapes_sd3_transformer(patch: int = SD3_PATCH, heads: int = SD3_HEADS, blocks: int = SD3_BLOCKS,
                           latent: tuple[int, int] = SHIPPED_LATENT, dual_attention: int = 0, qk_norm: bool = False):
    """The SD3 transformer over ``latent`` = (channels, side) latents (the shipped VAE's 16×16×4 by default);
    ``patch``, ``heads`` (of width 32) and ``blocks`` set its size. SD3.5's additions: ``dual_attention``
    gives the first that many blocks a second, image-only attention (MMDiT-X), ``qk_norm`` RMS-normalises
    queries and keys.

    >>> shapes_sd3_transformer(dual_attention=4).config.dual_attention_layers
    (0, 1, 2, 3)
    """
    from diffusers import SD3Transformer2DModel

    channels, side = latent
    if side % patch:
        raise ValueError(f"patch {patch} does not divide the {side}×{side} latent; use a divisor of {side}.")
    if not 0 <= dual_attention <= blocks:
        raise ValueError(f"dual attention in {dual_attention} blocks is impossible with {blocks} blocks; pass 0 to {blocks}.")
    return SD3Transformer2DModel(
        sample_size=side, patch_size=patch, in_channels=channels, out_channels=channels,
        num_layers=blocks, attention_head_dim=SD3_HEAD_DIM, num_attention_heads=heads,
        joint_attention_dim=2 * SD3_CLIP_WIDTH, caption_projection_dim=heads * SD3_HEAD_DIM,
        pooled_projection_dim=2 * SD3_CLIP_WIDTH, pos_embed_max_size=side,
        dual_attention_layers=tuple(range(dual_attention)), qk_norm="rms_norm" if qk_norm else None,
    )


def shapes_flow_scheduler():
    from diffusers import FlowMatchEulerDiscreteScheduler

    return FlowMatchEulerDiscreteScheduler(num_train_timesteps=1000, shift=1.0)
