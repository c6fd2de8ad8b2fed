"""The shipped MM-DiT at inference equals the training shortcut it was trained with."""

import torch

from attnscope.pipelines import load_pipeline
from training import architectures as arch
from training.train_mmdit import ZeroTokenBias, encode


def _pipe():
    return load_pipeline("shapes-mmdit", device="cpu", dtype="float32", require_adapter=False)


def test_inference_matches_the_training_shortcut():
    """The pipeline's 256 appended zero tokens act like training's single biased zero token."""
    pipe = _pipe()
    ids = arch.token_ids(pipe.tokenizer, ["a blue star"])
    latents = torch.randn(1, arch.LATENT_CHANNELS, 16, 16, generator=torch.Generator().manual_seed(1))
    t = torch.tensor([500.0])
    with torch.no_grad():
        embeds, _, pooled, _ = pipe.encode_prompt("a blue star", "a blue star", None, do_classifier_free_guidance=False)
        stock = pipe.transformer(latents, encoder_hidden_states=embeds, pooled_projections=pooled, timestep=t).sample
        context, pooled_train = encode([pipe.text_encoder, pipe.text_encoder_2], ids)
        with ZeroTokenBias(arch.SD3_ZERO_TOKENS):
            short = pipe.transformer(latents, encoder_hidden_states=context, pooled_projections=pooled_train, timestep=t).sample
    assert embeds.shape[1] == arch.MAX_TOKENS + arch.SD3_ZERO_TOKENS
    torch.testing.assert_close(short, stock, atol=1e-4, rtol=1e-4)


