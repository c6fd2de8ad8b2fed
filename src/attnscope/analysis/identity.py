"""Token identity of a text encoder: do its outputs keep the tokens apart from the start token?

A heat map of a word is the denoiser's attention to that word's token. If the text encoder maps a
token to (nearly) the same vector as the start token, the denoiser cannot tell the two apart and
the word's map is the start token's map: the whole-image baseline (issue #27).

The measure, on the hidden states the denoiser reads (``last_hidden_state``, after the final layer
norm, for Stable Diffusion; the penultimate layer for SD3, which reads ``hidden_states[-2]``), with
prompts padded as the pipelines pad them (to the tokenizer's ``model_max_length``):

* **position distance** ``d_i = ‖h_i − h_0‖₂`` of each caption position ``i`` (up to and including
  the first end token) to the start token's output ``h_0``;
* **word distance** ``‖h_1(w) − h_0‖₂`` of each word ``w`` encoded alone (``"red"`` → start, red,
  end, …), and the **pair distance** ``‖h_1(w) − h_1(v)‖₂`` between two words encoded alone;
* **scale** ``s``: the median of ``‖h_i − h_j‖₂`` over all pairs ``i < j`` of positions 0…end of
  every prompt: the typical distance between the outputs at two different positions;
* every distance divided by ``s`` is its **relative** value (scale-free, comparable across models).

:func:`collapsed` says whether any gated position, word or word pair is closer than
``threshold × s`` (default 0.1). The shipped encoders sit at 0.004–0.02 on the issue's positions
and words; a freshly initialised CLIP encoder at 0.5 or more (``docs/models.md``, limits).

Example:
    >>> from attnscope.analysis import encoder_identity, collapsed        # doctest: +SKIP
    >>> report = encoder_identity(pipe)                                    # doctest: +SKIP
    >>> report.position_table(0)     # (token, distance, relative) per position   # doctest: +SKIP
    >>> collapsed(report)            # False is the acceptance check of issue #27  # doctest: +SKIP
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Sequence

import torch

#: the issue's prompts: the Quick start demo and a single-object caption with a three-word prefix
DEFAULT_PROMPTS = ("a red circle to the left of a blue square", "a picture of a large green star")
#: tokens whose collapse :func:`collapsed` ignores by default: the article that opens every
#: ShapesWorld caption carries no information, so a healthy encoder may keep it near the start token
DEFAULT_IGNORE = ("a", "an")
DEFAULT_THRESHOLD = 0.1


@dataclass
class IdentityReport:
    """Distances of one text encoder's outputs to its start token's output (see the module doc).

    Attributes:
        prompts: the prompts measured.
        tokens: per prompt, the tokens from the start token to the first end token (inclusive).
        to_start: per prompt, ``(len(tokens),)`` distance of each position's output to position 0's.
        words: the words encoded alone.
        word_to_start: ``(len(words),)`` distance of each lone word's output to the start token's.
        word_pairs: ``(len(words), len(words))`` distances between lone words' outputs.
        scale: median distance between two positions' outputs within the prompts.
        layer: which hidden state was read ("final" or a ``hidden_states`` index).
    """

    prompts: list[str]
    tokens: list[list[str]]
    to_start: list[torch.Tensor]
    words: list[str]
    word_to_start: torch.Tensor
    word_pairs: torch.Tensor
    scale: float
    layer: str | int = "final"
    word_tokens: list[str] = field(default_factory=list)

    def relative(self, value):
        return value / self.scale if self.scale > 0 else value * float("inf")

    def position_table(self, prompt: int = 0) -> list[tuple[str, float, float]]:
        """``(token, distance, relative distance)`` for each position of one prompt."""
        d = self.to_start[prompt]
        return [(t, float(x), float(self.relative(x))) for t, x in zip(self.tokens[prompt], d)]

    def closest_pairs(self, n: int = 5) -> list[tuple[str, str, float]]:
        """The ``n`` closest pairs of different words encoded alone, as ``(word, word, relative)``."""
        w = len(self.words)
        upper = torch.triu_indices(w, w, offset=1)
        values = self.word_pairs[upper[0], upper[1]]
        order = values.argsort()[:n]
        return [(self.words[int(upper[0][k])], self.words[int(upper[1][k])], float(self.relative(values[k])))
                for k in order]

    def failures(self, threshold: float = DEFAULT_THRESHOLD, ignore: Sequence[str] = DEFAULT_IGNORE) -> list[str]:
        """What :func:`collapsed` objects to: one line per position, word or pair under the threshold."""
        out = []
        if not self.scale > 0:
            return ["every output is the same vector (scale 0)"]
        skip = {w.lower() for w in ignore}
        for p, (tokens, d) in enumerate(zip(self.tokens, self.to_start)):
            for i in range(1, len(tokens) - 1):  # between the start and the end token
                if _word(tokens[i]) in skip:
                    continue
                r = float(self.relative(d[i]))
                if r < threshold:
                    out.append(f"prompt {p} position {i} {tokens[i]!r}: {r:.4f} of the scale from the start token")
        for k, word in enumerate(self.words):
            if word.lower() in skip:
                continue
            r = float(self.relative(self.word_to_start[k]))
            if r < threshold:
                out.append(f"word {word!r} alone: {r:.4f} of the scale from the start token")
        gated = [k for k, word in enumerate(self.words) if word.lower() not in skip]
        for a in range(len(gated)):
            for b in range(a + 1, len(gated)):
                r = float(self.relative(self.word_pairs[gated[a], gated[b]]))
                if r < threshold:
                    out.append(f"words {self.words[gated[a]]!r} and {self.words[gated[b]]!r} alone: {r:.4f} of the scale apart")
        return out

    def summary(self, ignore: Sequence[str] = DEFAULT_IGNORE) -> dict[str, Any]:
        """Smallest relative distances (gated positions, lone words, word pairs) and the scale."""
        skip = {w.lower() for w in ignore}
        positions = [float(self.relative(d[i])) for toks, d in zip(self.tokens, self.to_start)
                     for i in range(1, len(toks) - 1) if _word(toks[i]) not in skip]
        keep = [k for k, w in enumerate(self.words) if w.lower() not in skip]
        words = [float(self.relative(self.word_to_start[k])) for k in keep]
        pairs = self.word_pairs[keep][:, keep]
        upper = torch.triu_indices(len(keep), len(keep), offset=1)
        pair_values = pairs[upper[0], upper[1]]
        return {
            "scale": self.scale,
            "min_position": min(positions) if positions else float("nan"),
            "min_word": min(words) if words else float("nan"),
            "min_pair": float(self.relative(pair_values.min())) if len(pair_values) else float("nan"),
            "median_pair": float(self.relative(pair_values.median())) if len(pair_values) else float("nan"),
        }

    def as_dict(self) -> dict[str, Any]:
        return {
            "layer": self.layer, "scale": self.scale,
            "prompts": [{"prompt": p, "positions": self.position_table(k)} for k, p in enumerate(self.prompts)],
            "words": {w: float(self.relative(self.word_to_start[k])) for k, w in enumerate(self.words)},
            "closest_pairs": self.closest_pairs(10),
            "summary": self.summary(),
        }


def _word(token: str) -> str:
    return token.replace("</w>", "").lower()


def _default_words(tokenizer) -> list[str]:
    from ..datasets.shapes import vocabulary

    return [w for w in vocabulary() if len(tokenizer.tokenize(w)) == 1]


def _reads_penultimate(pipe) -> bool:
    """SD3 pipelines condition on ``hidden_states[-2]``; Stable Diffusion ones on the final state."""
    return "StableDiffusion3" in type(pipe).__name__ or hasattr(pipe, "text_encoder_3")


@torch.no_grad()
def _hidden(encoder, tokenizer, texts: list[str], layer) -> tuple[torch.Tensor, torch.Tensor]:
    length = min(int(getattr(tokenizer, "model_max_length", 77)), 512)
    ids = tokenizer(texts, padding="max_length", max_length=length, truncation=True, return_tensors="pt").input_ids
    device = next(encoder.parameters()).device
    out = encoder(ids.to(device), output_hidden_states=layer != "final")
    states = out.last_hidden_state if layer == "final" else out.hidden_states[layer]
    return ids, states.float().cpu()


def encoder_identity(
    model: Any,
    prompts: Sequence[str] = DEFAULT_PROMPTS,
    words: Sequence[str] | None = None,
    *,
    tokenizer: Any = None,
    encoder: str = "text_encoder",
    layer: str | int | None = None,
) -> IdentityReport:
    """Measure how far a text encoder keeps caption positions and lone words from the start token.

    Args:
        model: a pipeline (its ``encoder`` attribute and matching tokenizer are used) or a CLIP
            text encoder (then pass ``tokenizer``).
        prompts: captions whose positions are measured.
        words: words encoded alone; default the ShapesWorld vocabulary words that are one token.
        tokenizer: the tokenizer, when ``model`` is an encoder.
        encoder: the pipeline's encoder attribute: ``"text_encoder"`` or ``"text_encoder_2"``.
        layer: ``"final"`` (``last_hidden_state``) or a ``hidden_states`` index; default what the
            pipeline's denoiser reads (-2 for SD3, ``"final"`` otherwise and for a bare encoder).
    """
    if hasattr(model, "unet") or hasattr(model, "transformer"):
        if layer is None:
            layer = -2 if _reads_penultimate(model) else "final"
        suffix = encoder[len("text_encoder"):]
        tokenizer = tokenizer or getattr(model, "tokenizer" + suffix)
        model = getattr(model, encoder)
    if tokenizer is None:
        raise ValueError("encoder_identity needs tokenizer= when given a bare text encoder")
    layer = "final" if layer is None else layer
    words = list(_default_words(tokenizer) if words is None else words)
    end_id = tokenizer.eos_token_id

    ids, states = _hidden(model, tokenizer, list(prompts), layer)
    tokens, to_start, gaps = [], [], []
    for row, h in zip(ids, states):
        ends = (row == end_id).nonzero()
        stop = int(ends[0]) + 1 if len(ends) else len(row)
        h = h[:stop]
        tokens.append(tokenizer.convert_ids_to_tokens(row[:stop].tolist()))
        to_start.append((h - h[0]).norm(dim=-1))
        pair = torch.cdist(h, h)
        upper = torch.triu_indices(stop, stop, offset=1)
        gaps.append(pair[upper[0], upper[1]])
    scale = float(torch.cat(gaps).median()) if gaps else 0.0

    if words:
        wids, wstates = _hidden(model, tokenizer, words, layer)
        lone = wstates[:, 1]
        word_to_start = (lone - wstates[:, 0]).norm(dim=-1)
        word_pairs = torch.cdist(lone, lone)
        word_tokens = tokenizer.convert_ids_to_tokens(wids[:, 1].tolist())
    else:
        word_to_start, word_pairs, word_tokens = torch.zeros(0), torch.zeros(0, 0), []
    return IdentityReport(list(prompts), tokens, to_start, words, word_to_start, word_pairs, scale, layer, word_tokens)


def collapsed(report_or_model: Any, threshold: float = DEFAULT_THRESHOLD, ignore: Sequence[str] = DEFAULT_IGNORE,
              **kwargs) -> bool:
    """Whether an encoder maps some gated caption position or lone word within ``threshold × scale``
    of the start token, or two lone words within ``threshold × scale`` of each other.

    Accepts an :class:`IdentityReport` or anything :func:`encoder_identity` accepts (``kwargs`` go
    there). ``ignore`` lists words not gated (default the articles "a"/"an"). For a pipeline with a
    second CLIP encoder (SD3), both encoders are checked.
    """
    if isinstance(report_or_model, IdentityReport):
        return bool(report_or_model.failures(threshold, ignore))
    names = ["text_encoder"]
    if getattr(report_or_model, "text_encoder_2", None) is not None and "encoder" not in kwargs:
        names.append("text_encoder_2")
    if not (hasattr(report_or_model, "unet") or hasattr(report_or_model, "transformer")):
        return bool(encoder_identity(report_or_model, **kwargs).failures(threshold, ignore))
    kwargs = {k: v for k, v in kwargs.items() if k != "encoder"} if len(names) > 1 else kwargs
    return any(encoder_identity(report_or_model, encoder=n, **kwargs).failures(threshold, ignore) for n in names)
