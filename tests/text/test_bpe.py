"""text/bpe.py: the BPE trainer keeps every required word one token, within the asked vocabulary size."""

from oq2vl_jax.text import bpe, tokens


def _tokenizer(tmp_path, texts, vocab_size):
    return tokens.open_tokenizer(bpe.train_bpe_tokenizer(str(tmp_path), texts, vocab_size))


def _single(tok) -> bool:
    return all(len(tok.encode(w, add_special_tokens=False)) == 1 for w in tokens.SINGLE_TOKEN_WORDS)


def test_captions_that_join_the_required_words_give_exactly_the_asked_size(tmp_path):
    """No room is taken from the learned merges when the captions already make every required word one token (the
    tokenizers of existing runs and fixtures stay what they were)."""
    texts = ["True False Yes No " * 40, "a red circle at the top left", "a blue square in the middle"] * 5
    tok = _tokenizer(tmp_path, texts, 300)
    assert _single(tok)
    assert len(tok) == 300


def test_captions_without_the_required_words_still_join_them_within_the_size(tmp_path):
    texts = [f"sample {i} is a {c} circle" for i in range(50) for c in ("red", "green", "blue")]
    tok = _tokenizer(tmp_path, texts, 320)
    assert _single(tok)
    assert len(tok) <= 320
    assert tok.decode(tok.encode("No, Nothing is True")) == "No, Nothing is True"
