"""The attention tap: read attention probabilities where ``scaled_dot_product_attention`` is called.

While one attention module runs, an :class:`AttentionTap` (a ``TorchFunctionMode``) sees its call
to ``F.scaled_dot_product_attention`` with q, k, v already projected, normed and rotated — the same
for UNet, SD3 and Flux processors. It hands q and k to an observer and then runs the original
fused kernel unchanged, so the traced output is bit-identical to the untraced one and fast SDPA
stays in use. Only the first SDPA call of each module forward is read (the text attention; an
IP-adapter's second call is left alone).

Example:
    >>> import torch, torch.nn.functional as F
    >>> seen = []
    >>> tap = AttentionTap(lambda q, k, mask, scale: seen.append(q.shape))
    >>> q = torch.randn(1, 2, 4, 8)
    >>> with tap:
    ...     _ = F.scaled_dot_product_attention(q, q, q)
    >>> seen
    [torch.Size([1, 2, 4, 8])]
"""

from __future__ import annotations

import math
import time
from typing import Callable

import torch
import torch.nn.functional as F
from torch.overrides import TorchFunctionMode

Observer = Callable[[torch.Tensor, torch.Tensor, "torch.Tensor | None", float], None]


class FirstSDPAMode(TorchFunctionMode):
    """A ``TorchFunctionMode`` that acts on the first SDPA call made while it is active: the base of
    every tap (entered when an attention module starts, left when it ends)."""

    def __init__(self):
        super().__init__()
        self.seen = False

    def __enter__(self):
        self.seen = False
        return super().__enter__()

    def first_call(self, func) -> bool:
        """True for the first ``F.scaled_dot_product_attention`` call since the mode was entered."""
        if func is F.scaled_dot_product_attention and not self.seen:
            self.seen = True
            return True
        return False


class AttentionTap(FirstSDPAMode):
    """Intercepts the first SDPA call while active and reports ``(q, k, attn_mask, scale)``."""

    def __init__(self, observer: Observer):
        super().__init__()
        self.observer = observer

    def __torch_function__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        if self.first_call(func):
            self.read(args, kwargs)
        return func(*args, **kwargs)

    def read(self, args: tuple, kwargs: dict) -> None:
        """Hand the SDPA call's q, k, mask and scale to the observer."""
        query, key, mask, scale = sdpa_arguments(args, kwargs)
        with torch.no_grad():
            self.observer(query, key, mask, scale)


class ProfiledTap(AttentionTap):
    """An :class:`AttentionTap` that adds its own Python time to a
    :class:`~attnscope.core.profile.HookProfile` (``observer`` and ``dispatch``)."""

    def __init__(self, observer: Observer, profile):
        super().__init__(observer)
        self.profile = profile

    def __torch_function__(self, func, types, args=(), kwargs=None):
        start = time.perf_counter()
        kwargs = kwargs or {}
        reads = self.first_call(func)
        if reads:
            self.read(args, kwargs)
        self.profile.add("observer" if reads else "dispatch", time.perf_counter() - start)
        return func(*args, **kwargs)


class OutputTap(FirstSDPAMode):
    """Runs the first SDPA call while active, then reports ``(q, k, v, attn_mask, scale, output)``.

    For side computations that need the attention *output* (ConceptAttention reads the image
    tokens' outputs before the output projection). The output is returned untouched, so the
    model's result is unchanged; the observer must not modify any of the tensors it is given.

    >>> import torch, torch.nn.functional as F
    >>> seen = []
    >>> q = torch.randn(1, 2, 4, 8)
    >>> with OutputTap(lambda q, k, v, mask, scale, out: seen.append(out.shape)):
    ...     out = F.scaled_dot_product_attention(q, q, q)
    >>> seen == [out.shape]
    True
    """

    def __init__(self, observer: Callable):
        super().__init__()
        self.observer = observer

    def __torch_function__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        output = func(*args, **kwargs)
        if self.first_call(func):
            query, key, mask, scale = sdpa_arguments(args, kwargs)
            value = args[2] if len(args) > 2 else kwargs["value"]
            with torch.no_grad():
                self.observer(query, key, value, mask, scale, output)
        return output


def sdpa_arguments(args: tuple, kwargs: dict):
    """``(query, key, attn_mask, scale)`` of an SDPA call, given positionally or by keyword."""
    names = ("query", "key", "value", "attn_mask")
    bound = dict(zip(names, args))
    bound.update({k: v for k, v in kwargs.items() if k in names or k == "scale"})
    query, key = bound["query"], bound["key"]
    scale = bound.get("scale")
    if scale is None:
        scale = 1.0 / math.sqrt(query.shape[-1])
    return query, key, bound.get("attn_mask"), scale


#: Below this many keys the explicit softmax is faster than the fused kernel's log-sum-exp (on CPU,
#: 77 keys: 2.5–3× faster explicit; 1,357–4,429 keys: 1.8–3× faster fused).
FUSED_MIN_KEYS = 512
#: Use the fused normaliser only when at most 1 in this many keys is kept.
FUSED_MIN_RATIO = 4


def fused_logsumexp(query: torch.Tensor, key: torch.Tensor, scale: float) -> torch.Tensor | None:
    """``log Σ_k exp(q·k·scale)`` per query, ``(..., queries)`` float32, from PyTorch's fused attention
    kernels (which compute it anyway and never build the score matrix); None where no kernel gives it.

    CPU: the flash kernel; CUDA: the memory-efficient kernel (its log-sum-exp is padded to a multiple
    of 32 queries). Any failure returns None and the caller computes the softmax explicitly.
    """
    q, k = query.float().contiguous(), key.float().contiguous()
    try:
        if q.device.type == "cpu":
            lse = torch.ops.aten._scaled_dot_product_flash_attention_for_cpu(q, k, k, scale=scale)[1]
        elif q.device.type == "cuda":
            lse = torch.ops.aten._scaled_dot_product_efficient_attention(q, k, k, None, True, scale=scale)[1]
        else:
            return None
    except (RuntimeError, AttributeError, TypeError, NotImplementedError):
        return None
    lse = lse[..., : q.shape[-2]]
    return lse if lse.shape == q.shape[:-1] else None


def attention_probs(
    query: torch.Tensor, key: torch.Tensor, mask: torch.Tensor | None, scale: float,
    keep: int | torch.Tensor | None = None,
) -> torch.Tensor:
    """``softmax(q kᵀ · scale + mask)`` in float32, **key-major**: shape ``(..., keys, queries)``; with
    ``keep``, only the first ``keep`` keys, or the keys at the positions ``keep`` (a 1-D index tensor,
    e.g. an MM-DiT's prompt keys after its image keys) — still normalised over every key.

    ``mask`` follows SDPA (boolean, True = attend, or additive float; broadcastable to
    ``(..., queries, keys)``). Scores are laid out keys × queries and the softmax runs in place on
    that buffer (max, subtract, exp, sum over keys): the reductions then run along contiguous
    memory, and the kept keys are one contiguous block — on CPU about 1.5× faster than
    ``Tensor.softmax`` on queries × keys at SD's 4096 × 77, and already the token-major layout
    that word maps are read in.

    >>> q, k = torch.randn(1, 2, 5, 4), torch.randn(1, 2, 7, 4)
    >>> probs = attention_probs(q, k, None, 0.5)
    >>> torch.allclose(probs, (q @ k.transpose(-1, -2) * 0.5).softmax(-1).transpose(-1, -2), atol=1e-6)
    True
    >>> torch.equal(attention_probs(q, k, None, 0.5, keep=3), probs[..., :3, :])
    True
    >>> torch.equal(attention_probs(q, k, None, 0.5, keep=torch.tensor([4, 6])), probs[..., [4, 6], :])
    True

    When few of many keys are kept (joint attention: the prompt's keys among thousands of image
    keys), the softmax's normaliser comes from the fused SDPA kernel's log-sum-exp instead, so the
    full queries × keys score matrix is never built (:func:`fused_logsumexp`).
    """
    n_keys = key.shape[-2]
    n_kept = n_keys if keep is None else (int(keep.numel()) if torch.is_tensor(keep) else min(int(keep), n_keys))
    if mask is None and n_keys >= FUSED_MIN_KEYS and n_kept * FUSED_MIN_RATIO <= n_keys:
        lse = fused_logsumexp(query, key, scale)
        if lse is not None:
            kept = key.index_select(-2, keep.to(key.device)) if torch.is_tensor(keep) else key[..., :n_kept, :]
            scores = torch.matmul(kept.float() * scale, query.float().transpose(-1, -2))
            return scores.sub_(lse.unsqueeze(-2)).exp_()
    # scaling k (keys × dim) is cheaper than scaling q (queries × dim) or the scores
    scores = torch.matmul(key.float() * scale, query.float().transpose(-1, -2))
    if mask is not None:
        mask = mask.transpose(-1, -2) if mask.dim() >= 2 else mask.unsqueeze(-1)
        if mask.dtype == torch.bool:
            scores.masked_fill_(~mask, float("-inf"))
        else:
            scores.add_(mask.float())
    scores.sub_(scores.amax(dim=-2, keepdim=True)).exp_()
    totals = scores.sum(dim=-2, keepdim=True)
    if torch.is_tensor(keep):
        return scores.index_select(-2, keep.to(scores.device)).div_(totals)
    kept = scores if keep is None or keep >= scores.shape[-2] else scores[..., :keep, :]
    return kept.div_(totals)
