"""Full-size MM-DiT block layouts from their published configs, built on the meta device (no weights):
the adapters find every joint-attention layer, its heads, the image/prompt split of a 1024² call and
the prompt segments."""

import pytest
import torch

import attnscope
from attnscope.testing import tiny_clip_tokenizer, tiny_t5_tokenizer

FLUX1 = dict(patch_size=1, in_channels=64, num_layers=19, num_single_layers=38, attention_head_dim=128,
             num_attention_heads=24, joint_attention_dim=4096, pooled_projection_dim=768, guidance_embeds=True,
             axes_dims_rope=(16, 56, 56))
SD3_BASE = dict(sample_size=128, patch_size=2, in_channels=16, out_channels=16, attention_head_dim=64,
                joint_attention_dim=4096, pooled_projection_dim=2048)
SD3_MEDIUM = dict(SD3_BASE, num_layers=24, num_attention_heads=24, caption_projection_dim=1536, pos_embed_max_size=192)
SD35_MEDIUM = dict(SD3_MEDIUM, pos_embed_max_size=384, qk_norm="rms_norm", dual_attention_layers=tuple(range(13)))
SD35_LARGE = dict(SD3_BASE, num_layers=38, num_attention_heads=38, caption_projection_dim=2432,
                  pos_embed_max_size=192, qk_norm="rms_norm")


def _sd3(config):
    from diffusers import FlowMatchEulerDiscreteScheduler, SD3Transformer2DModel, StableDiffusion3Pipeline

    with torch.device("meta"):
        transformer = SD3Transformer2DModel(**config)
    return StableDiffusion3Pipeline(transformer=transformer, scheduler=FlowMatchEulerDiscreteScheduler(), vae=None,
                                    text_encoder=None, tokenizer=tiny_clip_tokenizer(), text_encoder_2=None,
                                    tokenizer_2=tiny_clip_tokenizer(), text_encoder_3=None,
                                    tokenizer_3=tiny_t5_tokenizer(max_length=256))


@pytest.mark.parametrize("config,layers,heads,dual", [(SD3_MEDIUM, 24, 576, 0), (SD35_MEDIUM, 24, 576, 13),
                                                      (SD35_LARGE, 38, 1444, 0)])
def test_sd3_layouts(config, layers, heads, dual):
    pipe = _sd3(config)
    tc = attnscope.trace(pipe)
    assert [l.name for l in tc.layers] == [f"transformer_blocks.{i}.attn" for i in range(layers)]
    assert sum(l.heads for l in tc.layers) == heads and tc.layers[-1].head_offset == heads - config["num_attention_heads"]
    assert sum(b.attn2 is not None for b in pipe.transformer.transformer_blocks) == dual  # attn2 is never traced
    image, text = tc.adapter.token_layout(tc.layers[0], 4096 + 77 + 256, 4096 + 77 + 256, (128, 128))  # 1024² px
    assert (image, text) == (slice(0, 4096), slice(4096, 4096 + 333))
    assert tc.adapter.layer_grid(tc.layers[0], 4096, (128, 128)) == (64, 64, 2)
    assert len(tc.adapter.joint_blocks()) == layers


def test_flux1_layout():
    from diffusers import FlowMatchEulerDiscreteScheduler, FluxPipeline, FluxTransformer2DModel

    with torch.device("meta"):
        transformer = FluxTransformer2DModel(**FLUX1)
    pipe = FluxPipeline(transformer=transformer, scheduler=FlowMatchEulerDiscreteScheduler(), vae=None,
                        text_encoder=None, tokenizer=tiny_clip_tokenizer(), text_encoder_2=None,
                        tokenizer_2=tiny_t5_tokenizer(max_length=512))
    tc = attnscope.trace(pipe)
    assert [l.short_name for l in tc.layers] == [f"joint{i}.attn" for i in range(19)] + [f"single{i}.attn" for i in range(38)]
    assert sum(l.heads for l in tc.layers) == 57 * 24
    assert [s.name for s in tc.adapter.prompt_segments()] == ["t5"] and tc.adapter.text_encoder()[1].model_max_length == 512
    assert tc.adapter.patch_size() == 2 and tc.adapter.size_multiple() == 16
    image, text = tc.adapter.token_layout(tc.layers[-1], 512 + 4096, 512 + 4096, (128, 128))
    assert (image, text) == (slice(512, 512 + 4096), slice(0, 512))
    assert len(tc.adapter.joint_blocks()) == 19
    assert len(attnscope.trace(pipe, layers="single*").layers) == 38
