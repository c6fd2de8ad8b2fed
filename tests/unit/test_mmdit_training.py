"""The MM-DiT training shortcut is exact: one zero token with a log(256) logit bias equals SD3's 256 zero tokens."""

import torch

from attnscope.models import architectures as arch
from attnscope.models.train_mmdit import ZeroTokenBias


def test_one_biased_zero_token_equals_many():
    torch.manual_seed(0)
    transformer = arch.shapes_sd3_transformer().eval()
    latents = torch.randn(2, arch.LATENT_CHANNELS, 16, 16)
    context = torch.randn(2, 5, 2 * arch.SD3_CLIP_WIDTH)
    pooled = torch.randn(2, 2 * arch.SD3_CLIP_WIDTH)
    t = torch.tensor([300.0, 700.0])
    with torch.no_grad():
        many = torch.cat([context, torch.zeros(2, arch.SD3_ZERO_TOKENS, context.shape[-1])], dim=1)
        stock = transformer(latents, encoder_hidden_states=many, pooled_projections=pooled, timestep=t).sample
        one = torch.cat([context, torch.zeros(2, 1, context.shape[-1])], dim=1)
        with ZeroTokenBias(arch.SD3_ZERO_TOKENS):
            short = transformer(latents, encoder_hidden_states=one, pooled_projections=pooled, timestep=t).sample
    torch.testing.assert_close(short, stock, atol=1e-4, rtol=1e-4)
