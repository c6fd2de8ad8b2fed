"""Prompts made of several token segments, each labelled by the tokenizer that produced it.

A denoiser's text keys may concatenate the outputs of several text encoders along the sequence:
SD3 sees its CLIP positions, then its T5 positions (and zeros in their place when T5 is absent);
Flux sees T5 positions only; a UNet sees one CLIP sequence. An adapter lists these runs in order as
:class:`PromptSegment` objects (:meth:`attnscope.adapters.base.Adapter.prompt_segments`); the trace
records the ids each encoder saw, and this module turns them into the positions a trace stores and
the words they form.

*Text positions* count from the first text key; a segment starts where the previous one ends. With
``keep_padding=False`` a trace stores, per segment, the positions through the longest prompt's end
token; positions after the last segment (SD3's zero tokens without T5) carry no token and are kept
only with ``keep_padding=True``. *Stored positions* number the kept text positions from 0.

Example:
    >>> from attnscope.testing import tiny_clip_tokenizer
    >>> tok = tiny_clip_tokenizer(max_length=6)
    >>> ids = tok(["a cat"], padding="max_length", max_length=6, return_tensors="pt").input_ids
    >>> segs = [SegmentIds("clip", tok, ids), SegmentIds("t5", tok, ids)]
    >>> kept_positions(segs, total=14, keep_padding=False).tolist()   # through each end token
    [0, 1, 2, 3, 6, 7, 8, 9]
    >>> [(w.text, w.tokens) for w in merged_words(segs, kept_positions(segs, 14, False), 0)]
    [('a', (1, 5)), ('cat', (2, 6))]
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Sequence

import torch

from .tokens import Word, words_from_tokens


@dataclass
class PromptSegment:
    """One run of text positions: the encoder whose input ids label it and that encoder's tokenizer.

    ``encoder`` is the module whose forward pre-hook sees the ids (None: the run carries no ids).
    """

    name: str
    encoder: Any
    tokenizer: Any


@dataclass
class SegmentIds:
    """The ids a segment's encoder saw for one pipeline call, ``(prompts, length)``."""

    name: str
    tokenizer: Any
    ids: torch.Tensor

    @property
    def length(self) -> int:
        return int(self.ids.shape[-1])

    def special(self) -> set[str]:
        return set(getattr(self.tokenizer, "all_special_tokens", []) or [])


def content_end(row: Sequence[int], tokenizer: Any) -> int:
    """Positions of one id row through its end token (the first end or padding token after position 0)."""
    eos = getattr(tokenizer, "eos_token_id", None)
    pad = getattr(tokenizer, "pad_token_id", None)
    for i, tok in enumerate(row[1:], start=1):
        if tok == eos or (tok == pad and pad != eos):
            return i + 1
    return len(row)


def kept_positions(segments: Sequence[SegmentIds], total: int, keep_padding: bool) -> torch.Tensor:
    """Text positions to store, in order: every position with ``keep_padding``, else each segment's
    positions through its longest prompt's end token (``total``: the number of text keys)."""
    if keep_padding:
        return torch.arange(total)
    parts, start = [], 0
    for seg in segments:
        longest = max(content_end(row, seg.tokenizer) for row in seg.ids.tolist())
        parts.append(torch.arange(start, min(total, start + longest)))
        start += seg.length
    return torch.cat(parts) if parts else torch.arange(0)


def _owner(segments: Sequence[SegmentIds], position: int) -> tuple[SegmentIds | None, int]:
    start = 0
    for seg in segments:
        if position < start + seg.length:
            return seg, position - start
        start += seg.length
    return None, position - start


def token_labels(segments: Sequence[SegmentIds], positions: torch.Tensor, prompt: int) -> tuple[list[str], list[str]]:
    """``(token strings, segment names)`` of the stored ``positions`` for ``prompt``; a position no
    segment covers is labelled ``""`` with source ``""``."""
    tokens, sources = [], []
    for p in positions.tolist():
        seg, local = _owner(segments, p)
        if seg is None:
            tokens.append("")
            sources.append("")
        else:
            tokens.append(seg.tokenizer.convert_ids_to_tokens([int(seg.ids[prompt, local])])[0])
            sources.append(seg.name)
    return tokens, sources


def merged_words(segments: Sequence[SegmentIds], positions: torch.Tensor, prompt: int) -> list[Word]:
    """The prompt's words with their stored positions in every segment that encodes them.

    Each segment's tokens are grouped into words by its own tokenizer; the i-th word of every
    segment is the same word of the prompt when their texts agree (case-insensitively), and then
    holds the stored positions of all of them, segment after segment. Words on which the segments
    disagree (a tokenizer that normalises differently, or one that cut the prompt shorter) are
    appended after the first segment's words, each with its own segment's positions.
    """
    stored = {p: i for i, p in enumerate(positions.tolist())}
    per_segment, start = [], 0
    for seg in segments:
        tokens = seg.tokenizer.convert_ids_to_tokens(seg.ids[prompt].tolist())
        words = []
        for word in words_from_tokens(tokens, seg.special()):
            kept = tuple(stored[start + t] for t in word.tokens if start + t in stored)
            if kept:
                words.append(Word(word.text, kept))
        per_segment.append(words)
        start += seg.length
    if not per_segment:
        return []
    merged = list(per_segment[0])
    extra: list[Word] = []
    for words in per_segment[1:]:
        for i, word in enumerate(words):
            if i < len(merged) and merged[i].text.casefold() == word.text.casefold():
                merged[i] = Word(merged[i].text, merged[i].tokens + word.tokens)
            else:
                extra.append(word)
    return merged + extra
