"""Training a byte-level BPE tokenizer offline, shaped like Qwen2's: its split regex + byte level pre-tokenizer and
its special tokens `<|endoftext|>` (pad), `<|im_start|>`, `<|im_end|>` (eos). `load_tokenizer` (text/tokens.py) adds
`<s>` and `<|endofchunk|>` on top, as for the real Qwen2 tokenizer. Used by `python -m oq2vl_jax.data.build_tokenizer`
(captions from one's own shards) and by the demo's tiny tokenizer. Deterministic for given texts.

What the trainer and evaluation require of a tokenizer (text/tokens.py `check_qwen2`: "True", "False", "Yes", "No"
and the capital letters each one token, as the reference's `string2idx` asserts) is guaranteed, not left to the
captions: a word the learned merges do not join gets the few merges that join it, appended last (the lowest
priority, so every other word tokenizes as learned); room for them inside `vocab_size` is made only when the learned
vocabulary would overflow (it is learned again with a smaller budget), so captions that already join every required
word give exactly the tokenizer they always gave.
"""

from __future__ import annotations

import json
import os
from typing import Iterable

from oq2vl_jax.text.tokens import EOS_TOKEN, PAD_TOKEN, REQUIRED_TOKENS, SINGLE_TOKEN_WORDS

QWEN2_SPLIT = (r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*"
               r"|\s*[\r\n]+|\s+(?!\S)|\s+")


def train_bpe_tokenizer(out_dir: str, texts: Iterable[str], vocab_size: int) -> str:
    """Trains the BPE on `texts` and saves an HF tokenizer directory into out_dir (created); returns out_dir."""
    from tokenizers import Regex, Tokenizer, decoders, models, normalizers, pre_tokenizers, trainers

    tok = Tokenizer(models.BPE())
    tok.normalizer = normalizers.NFC()
    tok.pre_tokenizer = pre_tokenizers.Sequence([
        pre_tokenizers.Split(Regex(QWEN2_SPLIT), behavior="isolated", invert=False),
        pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False)])
    tok.decoder = decoders.ByteLevel()
    texts = list(texts)

    def train(size: int):
        trained = Tokenizer.from_str(tok.to_str())
        trainer = trainers.BpeTrainer(vocab_size=size, special_tokens=list(REQUIRED_TOKENS),
                                      initial_alphabet=pre_tokenizers.ByteLevel.alphabet(), show_progress=False)
        trained.train_from_iterator(texts, trainer=trainer)
        return trained

    # Room for the appended merges is made only when they are needed, so a corpus whose captions already join every
    # required word gives exactly the tokenizer it always gave. A smaller budget can split more words: shrink until
    # the appended merges fit, then fall back to reserving the most they can ever take.
    budget = vocab_size
    for _ in range(4):
        trained = train(budget)
        needed = _merges_needed(trained)
        if _vocab_size(trained) + needed <= vocab_size:
            break
        budget = vocab_size - needed
    else:
        trained = train(vocab_size - sum(len(w) - 1 for w in SINGLE_TOKEN_WORDS))
    tok = _join_single_token_words(trained)
    os.makedirs(out_dir, exist_ok=True)
    tok.save(os.path.join(out_dir, "tokenizer.json"))
    config = {"tokenizer_class": "PreTrainedTokenizerFast", "eos_token": EOS_TOKEN, "pad_token": PAD_TOKEN,
              "bos_token": None, "unk_token": None, "model_max_length": 32768, "clean_up_tokenization_spaces": False}
    with open(os.path.join(out_dir, "tokenizer_config.json"), "w") as f:
        json.dump(config, f, indent=2)
    return out_dir


def _vocab_size(tok) -> int:
    return tok.get_vocab_size(with_added_tokens=True)


def _merges_needed(tok) -> int:
    """How many merges `_join_single_token_words` would append to `tok`."""
    return sum(len(tok.encode(w, add_special_tokens=False).tokens) - 1 for w in SINGLE_TOKEN_WORDS)


def _join_single_token_words(tok):
    """`tok` with merges appended so each of SINGLE_TOKEN_WORDS is one token (see the module doc)."""
    from tokenizers import Tokenizer

    split = [(w, tok.encode(w, add_special_tokens=False).tokens) for w in SINGLE_TOKEN_WORDS]
    split = [(w, pieces) for w, pieces in split if len(pieces) > 1]
    if not split:
        return tok
    state = json.loads(tok.to_str())
    vocab, merges = state["model"]["vocab"], state["model"]["merges"]
    as_strings = bool(merges) and isinstance(merges[0], str)  # older `tokenizers` write "a b"
    for _, pieces in split:  # left to right: ((p1 p2) p3) ..., each merge after every learned one
        joined = pieces[0]
        for piece in pieces[1:]:
            merges.append(f"{joined} {piece}" if as_strings else [joined, piece])
            joined += piece
            vocab.setdefault(joined, len(vocab))
    return Tokenizer.from_str(json.dumps(state))
