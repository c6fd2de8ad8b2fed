"""The offline BPE builder makes every listed word a single token, whatever the order of words."""

from attnscope.datasets.shapes import vocabulary
from attnscope.tokenizer import word_bpe_tokenizer


def test_every_listed_word_is_one_token():
    words = vocabulary()
    for order in (words, list(reversed(words))):
        tok = word_bpe_tokenizer(order, max_length=24)
        assert all(len(tok.tokenize(w)) == 1 for w in words)


def test_unlisted_words_still_tokenize_into_pieces():
    tok = word_bpe_tokenizer(["cat"], pieces=["cat"])
    assert tok.tokenize("caterpillar")[0] == "cat" and len(tok.tokenize("caterpillar")) > 1
    assert tok.tokenize("cat") == ["cat</w>"]
