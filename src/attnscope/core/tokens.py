"""Prompt tokens and the words they form.

A trace records the token ids the text encoder actually saw. :func:`words_from_tokens` groups
those tokens back into the prompt's words using the tokenizer's own word-boundary markers
(CLIP BPE ``</w>``, SentencePiece ``▁``, byte-level ``Ġ``, WordPiece ``##``; a word-level
vocabulary is one token per word). Word lookup is exact: ``"cat"`` never matches a piece of
``"caterpillar"``.

Example:
    >>> ws = words_from_tokens(["<|startoftext|>", "a</w>", "gir", "affe</w>", "<|endoftext|>"],
    ...                        special={"<|startoftext|>", "<|endoftext|>"})
    >>> [(w.text, w.tokens) for w in ws]
    [('a', (1,)), ('giraffe', (2, 3))]
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence


@dataclass(frozen=True)
class Word:
    """A word of the prompt: its text and the token positions (in the encoder's sequence) it covers."""

    text: str
    tokens: tuple[int, ...]


def _clean(token: str) -> str:
    for marker in ("</w>", "▁", "Ġ", "##"):
        token = token.replace(marker, "")
    return token


def words_from_tokens(tokens: Sequence[str], special: set[str]) -> list[Word]:
    """Group tokens (strings, as the tokenizer names them) into words; special tokens are skipped."""
    content = [(i, t) for i, t in enumerate(tokens) if t not in special]
    if not content:
        return []
    uses_end_marker = any(t.endswith("</w>") for _, t in content)
    uses_start_marker = any(t.startswith(("▁", "Ġ")) for _, t in content)
    uses_continuation = any(t.startswith("##") for _, t in content)

    groups: list[list[tuple[int, str]]] = []
    open_group = False
    for i, t in content:
        if uses_end_marker:
            starts = not open_group
        elif uses_start_marker:
            starts = t.startswith(("▁", "Ġ")) or not groups
        elif uses_continuation:
            starts = not t.startswith("##")
        else:
            starts = True
        if starts:
            groups.append([])
        groups[-1].append((i, t))
        open_group = uses_end_marker and not t.endswith("</w>")
    words = []
    for g in groups:
        text = "".join(_clean(t) for _, t in g)
        if text:
            words.append(Word(text=text, tokens=tuple(i for i, _ in g)))
    return words


def find_word(words: Sequence[Word], query: str, occurrence: int | None = None) -> list[Word]:
    """Return the words equal to ``query`` (case-insensitive, whole words only).

    A query of several words (``"red circle"``) matches that sequence of words; its token sets are
    returned in order. ``occurrence`` picks the n-th match (0-based); ``None`` returns all matches.
    Raises ``KeyError`` with the prompt's words if nothing matches.
    """
    parts = query.casefold().split()
    if not parts:
        raise KeyError("An empty word was asked for; give one of the prompt's words.")
    texts = [w.text.casefold() for w in words]
    starts = [i for i in range(len(texts) - len(parts) + 1) if texts[i : i + len(parts)] == parts]
    if not starts:
        listed = " ".join(w.text for w in words) or "(no words)"
        raise KeyError(f"{query!r} is not a word of the prompt; its words are: {listed}")
    if occurrence is not None:
        if not -len(starts) <= occurrence < len(starts):
            raise KeyError(
                f"{query!r} occurs {len(starts)} time(s) in the prompt; occurrence={occurrence} does not exist."
            )
        starts = [starts[occurrence]]
    return [w for s in starts for w in words[s : s + len(parts)]]


def split_at_context(tokenizer, prompt: str, context: int) -> tuple[list[Word], list[Word]]:
    """The prompt's words that fit a text encoder's ``context`` tokens, and those cut off after it.

    The prompt is tokenized without truncation, the way the encoder would see it (start and end
    tokens included); a word any of whose tokens fall past the last content position is cut.
    """
    ids = tokenizer(prompt, truncation=False).input_ids
    tokens = tokenizer.convert_ids_to_tokens(ids)
    special = set(getattr(tokenizer, "all_special_tokens", []) or [])
    words = words_from_tokens(tokens, special)
    has_end = bool(tokens) and tokens[-1] in special
    last_content = context - (2 if has_end else 1)  # positions 0 … context-1, the end token takes the last
    kept = [w for w in words if max(w.tokens) <= last_content]
    return kept, [w for w in words if max(w.tokens) > last_content]
