"""CLIP-style BPE tokenizers built offline from a word list.

The vocabulary holds CLIP's 256 byte symbols, their end-of-word forms and the merges that make
each listed word a single token; any other word still tokenizes, split into pieces. The result is
a real ``CLIPTokenizer`` that saves and loads with ``save_pretrained`` / ``from_pretrained``.

Example:
    >>> tok = word_bpe_tokenizer(["red", "circle"], max_length=16)
    >>> tok.tokenize("a red circle")
    ['a</w>', 'red</w>', 'circle</w>']
"""

from __future__ import annotations

from typing import Iterable


def _byte_alphabet() -> list[str]:
    """CLIP's printable stand-ins for the 256 byte values."""
    printable = set(range(ord("!"), ord("~") + 1)) | set(range(ord("¡"), ord("¬") + 1)) | set(range(ord("®"), ord("ÿ") + 1))
    chars, extra = [], 0
    for b in range(256):
        if b in printable:
            chars.append(chr(b))
        else:
            chars.append(chr(256 + extra))
            extra += 1
    return chars


def _merges_for(word: str, final: bool) -> list[tuple[str, str]]:
    pieces = list(word)
    if final:
        pieces[-1] += "</w>"
    merges, current = [], pieces[0]
    for nxt in pieces[1:]:
        merges.append((current, nxt))
        current += nxt
    return merges


def _apply_merges(parts: list[str], merges: list[tuple[str, str]]) -> list[str]:
    """Byte-pair encoding of one word: repeatedly join the adjacent pair of best (lowest) rank."""
    rank = {pair: i for i, pair in enumerate(merges)}
    while len(parts) > 1:
        pairs = [(rank.get((a, b), len(rank)), i) for i, (a, b) in enumerate(zip(parts, parts[1:]))]
        best, i = min(pairs)
        if best == len(rank):
            break
        parts = parts[:i] + [parts[i] + parts[i + 1]] + parts[i + 2 :]
    return parts


def word_bpe_tokenizer(words: Iterable[str], pieces: Iterable[str] = (), max_length: int = 77):
    """A ``CLIPTokenizer`` in which every word of ``words`` is one token (``pieces``: extra sub-word tokens)."""
    from transformers import CLIPTokenizer

    alphabet = _byte_alphabet()
    tokens = alphabet + [c + "</w>" for c in alphabet]
    merges: list[tuple[str, str]] = []
    for piece in pieces:
        merges += _merges_for(piece, final=False)
    merges = list(dict.fromkeys(merges))
    for word in words:
        # join whatever the merges so far make of this word; appended merges rank below all
        # earlier ones, so they can never break a word merged before
        parts = _apply_merges(list(word[:-1]) + [word[-1] + "</w>"], merges)
        current = parts[0]
        for nxt in parts[1:]:
            if (current, nxt) not in merges:
                merges.append((current, nxt))
            current += nxt
    tokens += [left + right for left, right in merges]
    vocab = {t: i for i, t in enumerate(dict.fromkeys(tokens))}
    for special in ("<|startoftext|>", "<|endoftext|>"):
        vocab[special] = len(vocab)
    tok = CLIPTokenizer(vocab=vocab, merges=merges)
    tok.model_max_length = max_length
    return tok
