"""Tiny random-weight pipelines built offline, for tests, benchmarks and demos.

Nothing here downloads: the CLIP-style BPE tokenizer is built in code from a small vocabulary
(bytes + ``</w>`` forms + merges for a handful of words, so some words are one token and others
split into several), and every model is a random-initialised diffusers model from a small config.

Example:
    >>> pipe = tiny_sd_pipeline()                 # doctest: +SKIP
    >>> pipe("a cat", num_inference_steps=2, output_type="np").images.shape   # doctest: +SKIP
    (1, 32, 32, 3)
"""

from __future__ import annotations

import torch

#: Words that become single tokens; every other word splits into smaller pieces.
MERGED_WORDS = ("a", "an", "and", "cat", "dog", "red", "blue", "the", "of", "photo", "on", "with", "hat")
#: Pieces (without end marker) so that e.g. "caterpillar" starts with the piece "cat".
MERGED_PIECES = ("cat", "gir", "ze")


def tiny_clip_tokenizer(max_length: int = 77):
    """A CLIP BPE tokenizer over a small vocabulary, built without any download."""
    from .tokenizer import word_bpe_tokenizer

    return word_bpe_tokenizer(MERGED_WORDS, pieces=MERGED_PIECES, max_length=max_length)


def _text_encoder(vocab_size: int, hidden: int, with_projection: bool = False, seed: int = 0):
    from transformers import CLIPTextConfig, CLIPTextModel, CLIPTextModelWithProjection

    torch.manual_seed(seed)
    config = CLIPTextConfig(
        vocab_size=vocab_size, hidden_size=hidden, intermediate_size=2 * hidden, num_hidden_layers=2,
        num_attention_heads=2, max_position_embeddings=77, projection_dim=hidden, bos_token_id=vocab_size - 2,
        eos_token_id=vocab_size - 1, pad_token_id=vocab_size - 1,
    )
    model = (CLIPTextModelWithProjection if with_projection else CLIPTextModel)(config)
    return model.eval()


def _vae(levels: int, seed: int = 0):
    from diffusers import AutoencoderKL

    torch.manual_seed(seed)
    return AutoencoderKL(
        block_out_channels=(8,) * levels, in_channels=3, out_channels=3, latent_channels=4,
        down_block_types=("DownEncoderBlock2D",) * levels, up_block_types=("UpDecoderBlock2D",) * levels,
        norm_num_groups=4, layers_per_block=1,
    ).eval()


def tiny_sd_pipeline(sample_size: int = 16, vae_levels: int = 2, seed: int = 0, heads=(2, 4)):
    """Stable-Diffusion-layout pipeline: cross-attention at two resolutions plus the mid block."""
    from diffusers import DDIMScheduler, StableDiffusionPipeline, UNet2DConditionModel

    tokenizer = tiny_clip_tokenizer()
    torch.manual_seed(seed)
    unet = UNet2DConditionModel(
        sample_size=sample_size, in_channels=4, out_channels=4, layers_per_block=1,
        block_out_channels=(32, 64), down_block_types=("CrossAttnDownBlock2D", "CrossAttnDownBlock2D"),
        up_block_types=("CrossAttnUpBlock2D", "CrossAttnUpBlock2D"), cross_attention_dim=32,
        attention_head_dim=list(heads), norm_num_groups=8,
    ).eval()
    pipe = StableDiffusionPipeline(
        vae=_vae(vae_levels, seed), text_encoder=_text_encoder(len(tokenizer), 32, seed=seed), tokenizer=tokenizer,
        unet=unet, scheduler=DDIMScheduler(beta_schedule="scaled_linear", clip_sample=False, set_alpha_to_one=False, steps_offset=1),
        safety_checker=None, feature_extractor=None, requires_safety_checker=False,
    )
    pipe.set_progress_bar_config(disable=True)
    return pipe


def sd_proportioned_pipeline(seed: int = 0):
    """Tiny weights in SD's proportions: 64×64 latent, 8× VAE, 512×512 images, 77 tokens."""
    return tiny_sd_pipeline(sample_size=64, vae_levels=4, seed=seed)


def tiny_sdxl_pipeline(sample_size: int = 16, seed: int = 0):
    """SDXL-layout pipeline: two CLIP text encoders, text-time conditioning, 2 transformer layers deep."""
    from diffusers import EulerDiscreteScheduler, StableDiffusionXLPipeline, UNet2DConditionModel

    tokenizer = tiny_clip_tokenizer()
    tokenizer_2 = tiny_clip_tokenizer()
    torch.manual_seed(seed)
    unet = UNet2DConditionModel(
        sample_size=sample_size, in_channels=4, out_channels=4, layers_per_block=1,
        block_out_channels=(32, 64), down_block_types=("DownBlock2D", "CrossAttnDownBlock2D"),
        up_block_types=("CrossAttnUpBlock2D", "UpBlock2D"), cross_attention_dim=64,
        attention_head_dim=(2, 4), transformer_layers_per_block=(1, 2), norm_num_groups=8,
        addition_embed_type="text_time", addition_time_embed_dim=8, projection_class_embeddings_input_dim=80,
        use_linear_projection=True,
    ).eval()
    pipe = StableDiffusionXLPipeline(
        vae=_vae(2, seed), text_encoder=_text_encoder(len(tokenizer), 32, seed=seed),
        text_encoder_2=_text_encoder(len(tokenizer_2), 32, with_projection=True, seed=seed + 1),
        tokenizer=tokenizer, tokenizer_2=tokenizer_2, unet=unet,
        scheduler=EulerDiscreteScheduler(beta_schedule="scaled_linear"), force_zeros_for_empty_prompt=True,
    )
    pipe.set_progress_bar_config(disable=True)
    return pipe


# -- tiny MM-DiT pipelines (SD3 / SD3.5 and Flux layouts) -------------------------------------------

#: Word pieces of the tiny T5-style tokenizer: these words are one piece; "giraffe" and "zebra" split.
T5_WORDS = MERGED_WORDS + ("circle", "square", "background", "sky", "grass")
T5_PIECES = ("▁gir", "affe", "▁ze", "bra")


def tiny_t5_tokenizer(max_length: int = 32):
    """A T5-style SentencePiece (Unigram) tokenizer over a small vocabulary, built without any download.

    Listed words are single pieces (``▁cat``); others split into pieces or letters; characters
    outside a–z become ``<unk>``. Like T5's, it appends ``</s>`` and pads with ``<pad>`` (id 0).

    >>> tok = tiny_t5_tokenizer()
    >>> tok.convert_ids_to_tokens(tok("a giraffe").input_ids)
    ['▁a', '▁gir', 'affe', '</s>']
    """
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors
    from transformers import T5TokenizerFast

    specials = ["<pad>", "</s>", "<unk>"]
    pieces = [("▁" + w, -2.0) for w in T5_WORDS] + [(p, -3.0) for p in T5_PIECES] + [("▁", -4.0)]
    pieces += [(c, -6.0) for c in "abcdefghijklmnopqrstuvwxyz"]
    model = Tokenizer(models.Unigram([(s, 0.0) for s in specials] + pieces, unk_id=specials.index("<unk>")))
    model.pre_tokenizer = pre_tokenizers.Metaspace(replacement="▁", prepend_scheme="always")
    model.decoder = decoders.Metaspace(replacement="▁", prepend_scheme="always")
    model.post_processor = processors.TemplateProcessing(single="$A </s>", pair="$A </s> $B </s>",
                                                         special_tokens=[("</s>", specials.index("</s>"))])
    return T5TokenizerFast(tokenizer_object=model, pad_token="<pad>", eos_token="</s>", unk_token="<unk>",
                           extra_ids=0, model_max_length=max_length)


def _t5_encoder(vocab_size: int, hidden: int, seed: int = 0):
    from transformers import T5Config, T5EncoderModel

    torch.manual_seed(seed)
    config = T5Config(vocab_size=vocab_size, d_model=hidden, d_kv=hidden // 4, d_ff=2 * hidden, num_layers=2,
                      num_heads=2, relative_attention_num_buckets=8, decoder_start_token_id=0, pad_token_id=0,
                      eos_token_id=1)
    return T5EncoderModel(config).eval()


def _mmdit_vae(latent_channels: int, seed: int = 0):
    """A 2-level VAE (scale 2) with the shift and scaling factors SD3 and Flux decode with."""
    from diffusers import AutoencoderKL

    torch.manual_seed(seed)
    return AutoencoderKL(
        block_out_channels=(8, 8), in_channels=3, out_channels=3, latent_channels=latent_channels,
        down_block_types=("DownEncoderBlock2D",) * 2, up_block_types=("UpDecoderBlock2D",) * 2,
        norm_num_groups=4, layers_per_block=1, shift_factor=0.1, scaling_factor=1.2,
    ).eval()


def tiny_sd3_pipeline(t5: bool = True, dual_attention_layers=(), qk_norm=None, num_layers: int = 3, seed: int = 0):
    """SD3-layout pipeline: two CLIP encoders and (``t5=True``) a T5 encoder; 32×32 images by default.

    ``dual_attention_layers=(0,)`` and ``qk_norm="rms_norm"`` give SD3.5's blocks. The last block's
    text stream is pre-only, as in SD3.
    """
    from diffusers import FlowMatchEulerDiscreteScheduler, SD3Transformer2DModel, StableDiffusion3Pipeline

    tokenizer, tokenizer_2 = tiny_clip_tokenizer(), tiny_clip_tokenizer()
    t5_tokenizer = tiny_t5_tokenizer() if t5 else None
    torch.manual_seed(seed)
    transformer = SD3Transformer2DModel(
        sample_size=16, patch_size=2, in_channels=4, num_layers=num_layers, attention_head_dim=8,
        num_attention_heads=2, joint_attention_dim=64, caption_projection_dim=16, pooled_projection_dim=64,
        out_channels=4, pos_embed_max_size=16, dual_attention_layers=tuple(dual_attention_layers), qk_norm=qk_norm,
    ).eval()
    pipe = StableDiffusion3Pipeline(
        transformer=transformer, scheduler=FlowMatchEulerDiscreteScheduler(), vae=_mmdit_vae(4, seed),
        text_encoder=_text_encoder(len(tokenizer), 32, with_projection=True, seed=seed), tokenizer=tokenizer,
        text_encoder_2=_text_encoder(len(tokenizer_2), 32, with_projection=True, seed=seed + 1), tokenizer_2=tokenizer_2,
        text_encoder_3=_t5_encoder(len(t5_tokenizer), 64, seed) if t5 else None, tokenizer_3=t5_tokenizer,
    )
    pipe.set_progress_bar_config(disable=True)
    return pipe


def tiny_flux_pipeline(num_layers: int = 2, num_single_layers: int = 2, seed: int = 0):
    """Flux-layout pipeline: double- and single-stream blocks, guidance embedding, CLIP (pooled) and T5."""
    from diffusers import FlowMatchEulerDiscreteScheduler, FluxPipeline, FluxTransformer2DModel

    tokenizer, t5_tokenizer = tiny_clip_tokenizer(), tiny_t5_tokenizer()
    torch.manual_seed(seed)
    transformer = FluxTransformer2DModel(
        patch_size=1, in_channels=16, num_layers=num_layers, num_single_layers=num_single_layers,
        attention_head_dim=8, num_attention_heads=2, joint_attention_dim=32, pooled_projection_dim=32,
        guidance_embeds=True, axes_dims_rope=(2, 2, 4),
    ).eval()
    pipe = FluxPipeline(
        transformer=transformer, scheduler=FlowMatchEulerDiscreteScheduler(), vae=_mmdit_vae(4, seed),
        text_encoder=_text_encoder(len(tokenizer), 32, seed=seed), tokenizer=tokenizer,
        text_encoder_2=_t5_encoder(len(t5_tokenizer), 32, seed), tokenizer_2=t5_tokenizer,
    )
    pipe.set_progress_bar_config(disable=True)
    return pipe
