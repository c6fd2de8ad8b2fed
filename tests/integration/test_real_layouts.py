"""Layer layouts of the real architectures, from their published configs, built on the meta device.

No weights are allocated or downloaded; the adapter must find the cross-attention layers and the
head counts the HRV paper reports (SD 1.x: 16 layers × 8 heads = 128; SDXL: 70 layers, 1300 heads).
"""

import pytest
import torch

from attnscope.adapters.unet import UNetAdapter
from attnscope.core.layers import assign_head_offsets

SD15 = dict(
    sample_size=64, block_out_channels=(320, 640, 1280, 1280), layers_per_block=2, cross_attention_dim=768,
    attention_head_dim=8,
    down_block_types=("CrossAttnDownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D", "DownBlock2D"),
    up_block_types=("UpBlock2D", "CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "CrossAttnUpBlock2D"),
)
SD21 = dict(SD15, sample_size=96, cross_attention_dim=1024, attention_head_dim=(5, 10, 20, 20), use_linear_projection=True)
SDXL = dict(
    sample_size=128, block_out_channels=(320, 640, 1280), layers_per_block=2, cross_attention_dim=2048,
    attention_head_dim=(5, 10, 20), transformer_layers_per_block=(1, 2, 10), use_linear_projection=True,
    down_block_types=("DownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D"),
    up_block_types=("CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "UpBlock2D"),
    addition_embed_type="text_time", addition_time_embed_dim=256, projection_class_embeddings_input_dim=2816,
)


class _Pipe:
    def __init__(self, unet):
        self.unet = unet


@pytest.mark.parametrize("config,layers,heads", [(SD15, 16, 128), (SD21, 16, 195), (SDXL, 70, 1300)])
def test_real_layouts(config, layers, heads):
    from diffusers import UNet2DConditionModel

    with torch.device("meta"):
        unet = UNet2DConditionModel(**config)
    found = [info for info, _ in UNetAdapter(_Pipe(unet)).attention_layers()]
    assert len(found) == layers
    assert assign_head_offsets(found) == heads
    blocks = [info.block for info in found]
    assert blocks == sorted(blocks, key=["down_blocks", "mid_block", "up_blocks"].index)
