"""Training a byte-level BPE tokenizer offline, shaped like Qwen2's: its split regex + byte level pre-tokenizer and
its special tokens `<|endoftext|>` (pad), `<|im_start|>`, `<|im_end|>` (eos). `load_tokenizer` (text/tokens.py) adds
`<s>` and `<|endofchunk|>` on top, as for the real Qwen2 tokenizer. Used by `python -m oq2vl_jax.data.build_tokenizer`
(captions from one's own shards) and by the demo's tiny tokenizer. Deterministic for given texts.
"""

from __future__ import annotations

import json
import os
from typing import Iterable

from oq2vl_jax.text.tokens import EOS_TOKEN, PAD_TOKEN, REQUIRED_TOKENS

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
    trainer = trainers.BpeTrainer(vocab_size=vocab_size, special_tokens=list(REQUIRED_TOKENS),
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet(), show_progress=False)
    tok.train_from_iterator(texts, trainer=trainer)
    os.makedirs(out_dir, exist_ok=True)
    tok.save(os.path.join(out_dir, "tokenizer.json"))
    config = {"tokenizer_class": "PreTrainedTokenizerFast", "eos_token": EOS_TOKEN, "pad_token": PAD_TOKEN,
              "bos_token": None, "unk_token": None, "model_max_length": 32768, "clean_up_tokenization_spaces": False}
    with open(os.path.join(out_dir, "tokenizer_config.json"), "w") as f:
        json.dump(config, f, indent=2)
    return out_dir
