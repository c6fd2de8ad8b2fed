"""The observer's probabilities, explicit or normalised by the fused kernel's log-sum-exp."""

import pytest
import torch

from attnscope.core import tap
from attnscope.core.tap import FUSED_MIN_KEYS, attention_probs, fused_logsumexp


def _reference(q, k, scale):
    return (q.double() @ k.double().transpose(-1, -2) * scale).softmax(-1).transpose(-1, -2)


@pytest.mark.parametrize("keep", [64, torch.arange(FUSED_MIN_KEYS, FUSED_MIN_KEYS + 40)])
def test_few_of_many_keys_use_the_fused_normaliser_and_agree(keep, monkeypatch):
    torch.manual_seed(0)
    q, k = torch.randn(2, 3, 300, 16), torch.randn(2, 3, FUSED_MIN_KEYS + 100, 16)
    calls = []
    real = tap.fused_logsumexp
    monkeypatch.setattr(tap, "fused_logsumexp", lambda *a: calls.append(1) or real(*a))
    got = attention_probs(q, k, None, 0.25, keep=keep)
    assert calls, "the fused path was not taken"
    index = keep if torch.is_tensor(keep) else torch.arange(keep)
    torch.testing.assert_close(got.double(), _reference(q, k, 0.25)[..., index, :], atol=1e-6, rtol=1e-5)


def test_a_kept_prefix_and_the_rest_sum_to_one():
    q, k = torch.randn(1, 2, 200, 8), torch.randn(1, 2, 2 * FUSED_MIN_KEYS, 8)
    kept = attention_probs(q, k, None, 0.3, keep=FUSED_MIN_KEYS // 8)
    rest = _reference(q, k, 0.3)[..., FUSED_MIN_KEYS // 8 :, :].sum(-2)
    torch.testing.assert_close(kept.double().sum(-2) + rest, torch.ones(1, 2, 200, dtype=torch.float64))


def test_few_keys_or_a_mask_stay_explicit(monkeypatch):
    monkeypatch.setattr(tap, "fused_logsumexp", lambda *a: pytest.fail("fused path taken"))
    q, k = torch.randn(1, 2, 50, 8), torch.randn(1, 2, 77, 8)
    attention_probs(q, k, None, 0.3, keep=10)
    big = torch.randn(1, 2, 2 * FUSED_MIN_KEYS, 8)
    mask = torch.ones(50, 2 * FUSED_MIN_KEYS, dtype=torch.bool)
    attention_probs(q, big, mask, 0.3, keep=10)


def test_fused_logsumexp_matches_torch():
    q, k = torch.randn(1, 2, 30, 8), torch.randn(1, 2, 40, 8)
    lse = fused_logsumexp(q, k, 0.5)
    assert lse is not None
    torch.testing.assert_close(lse, torch.logsumexp(q @ k.transpose(-1, -2) * 0.5, -1), atol=1e-5, rtol=1e-5)
