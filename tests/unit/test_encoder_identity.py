"""The token-identity measure of issue #27 (``attnscope.analysis``).

A freshly initialised CLIP encoder and the shipped models' encoders (shapes-unet's, trained with
the token-identity loss, and shapes-mmdit's two CLIP encoders made from it, read at SD3's
penultimate layer) keep every caption position and every word encoded alone apart from the start
token and from each other. ``ACCEPTANCE`` lists the encoders that must pass the issue's acceptance
check (``collapsed(...)`` is False); a constructed encoder with collapsed positions must fail it.
"""

import pytest
import torch

from attnscope.analysis import collapsed, encoder_identity


@pytest.fixture(scope="module")
def shipped():
    from attnscope.pipelines import load_pipeline

    return {name: load_pipeline(name, device="cpu") for name in ("shapes-unet", "shapes-mmdit")}


def random_encoder(seed: int):
    from transformers import CLIPTextConfig, CLIPTextModel

    from attnscope.datasets.shapes import vocabulary
    from attnscope.tokenizer import word_bpe_tokenizer

    tokenizer = word_bpe_tokenizer(vocabulary(), max_length=24)  # the shipped models' tokenizer
    n = len(tokenizer)
    config = CLIPTextConfig(vocab_size=n, hidden_size=128, intermediate_size=512, num_hidden_layers=3,
                            num_attention_heads=4, max_position_embeddings=24, projection_dim=128,
                            bos_token_id=n - 2, eos_token_id=n - 1, pad_token_id=n - 1)
    torch.manual_seed(seed)
    return CLIPTextModel(config).eval(), tokenizer


#: models that must pass the acceptance check
ACCEPTANCE = ["random-0", "random-1", "shapes-unet", "shapes-mmdit"]


def load_for_acceptance(name: str, shipped=None):
    if name.startswith("random-"):
        encoder, tokenizer = random_encoder(int(name.split("-")[1]))
        return encoder_identity(encoder, tokenizer=tokenizer)
    return shipped[name]


def acceptance(model) -> None:
    """Issue #27's done-when: no gated position, lone word or word pair within 0.1 × scale (see
    ``attnscope.analysis.identity``); for SD3 both CLIP encoders are checked."""
    reports = [model] if not hasattr(model, "text_encoder") else (
        [encoder_identity(model, encoder=e) for e in ("text_encoder", "text_encoder_2") if getattr(model, e, None) is not None])
    failures = [line for report in reports for line in report.failures()]
    assert not failures, f"{len(failures)} collapsed items, e.g. {failures[:5]}"


@pytest.mark.parametrize("name", ACCEPTANCE)
def test_acceptance(name, request):
    model = load_for_acceptance(name, request.getfixturevalue("shipped") if not name.startswith("random-") else None)
    acceptance(model)
    assert collapsed(model) is False


def test_each_model_is_measured_where_its_denoiser_reads(shipped):
    """SD3 reads the penultimate hidden state of both CLIP encoders, Stable Diffusion the final one."""
    assert encoder_identity(shipped["shapes-unet"]).layer == "final"
    for encoder in ("text_encoder", "text_encoder_2"):
        assert encoder_identity(shipped["shapes-mmdit"], encoder=encoder).layer == -2


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_random_encoder_keeps_positions_and_words_apart(seed):
    encoder, tokenizer = random_encoder(seed)
    report = encoder_identity(encoder, tokenizer=tokenizer)
    summary = report.summary()
    assert summary["min_position"] > 0.5 and summary["min_word"] > 0.5 and summary["min_pair"] > 0.3, summary
    assert not collapsed(report)
    assert len(report.words) == 27 and report.word_pairs.shape == (27, 27)


def test_collapse_is_detected_on_a_constructed_encoder():
    """An encoder whose positions 1-3 copy the start token's input fails; ignoring them passes."""
    encoder, tokenizer = random_encoder(0)
    emb = getattr(encoder, "text_model", encoder).embeddings  # transformers < 5 nests the stack
    with torch.no_grad():
        # every token looks like the start token, and positions 1-3 look like position 0
        emb.token_embedding.weight[:] = emb.token_embedding.weight[tokenizer.bos_token_id]
        emb.position_embedding.weight[1:4] = emb.position_embedding.weight[0]
    report = encoder_identity(encoder, tokenizer=tokenizer, words=["red", "blue"])
    assert collapsed(report)
    rel = [r for _, _, r in report.position_table(0)]
    assert max(rel[1:4]) < 1e-4 < min(rel[4:])


def test_scale_free_and_bad_arguments():
    encoder, tokenizer = random_encoder(0)
    a = encoder_identity(encoder, tokenizer=tokenizer, words=["red", "blue", "circle"])
    with torch.no_grad():  # scaling the final norm scales every distance: relative values stay
        norm = getattr(encoder, "text_model", encoder).final_layer_norm
        norm.weight.mul_(3.0)
        norm.bias.mul_(3.0)
    b = encoder_identity(encoder, tokenizer=tokenizer, words=["red", "blue", "circle"])
    assert b.scale == pytest.approx(3 * a.scale, rel=1e-4)
    assert [r for *_, r in b.position_table(0)] == pytest.approx([r for *_, r in a.position_table(0)], abs=1e-4)
    with pytest.raises(ValueError, match="tokenizer"):
        encoder_identity(encoder)
