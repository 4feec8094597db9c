"""`convert import`'s output: an imported model written as an oq2vl_jax checkpoint (step 0: params, meta,
vision_extra, and the tokenizer with the reference's tokens)."""

from __future__ import annotations

import os
import tempfile

import numpy as np

from oq2vl_jax import checkpoint_io
from oq2vl_jax.errors import UserError
from oq2vl_jax.pretrained.importer import Imported
from oq2vl_jax.text import contract as contract_lib, tokens


def save_imported(imported: Imported, out_dir: str, tokenizer_dir: str | None) -> list[str]:
    """Writes the checkpoint (step 0, params + meta + vision_extra, tokenizer with the reference's tokens);
    returns summary lines."""
    if os.path.isdir(out_dir) and os.listdir(out_dir):
        raise UserError(f"output '{out_dir}' exists and is not empty; choose a new directory")
    lines = list(imported.description)
    if imported.contract is not None:
        lines.append(f"prompt contract: {imported.contract.describe()}")
    meta = {"source": imported.description,
            **checkpoint_io.contract_meta(imported.contract or contract_lib.TRAINED_DEFAULT)}
    if imported.llm_hf_config is not None:
        meta["llm_hf_config"] = imported.llm_hf_config
    with tempfile.TemporaryDirectory() as tmp:
        tok_out = None
        if tokenizer_dir is not None:
            tok_out = os.path.join(tmp, "tokenizer")
            ids = tokens.prepare(tokenizer_dir, tok_out, vocab_size=imported.config.llm.vocab_size)
            meta["token_ids"] = ids
            lines.append(f"tokenizer: {ids['size']} tokens, <|endofchunk|>={ids['endofchunk']}, <s> (bos)={ids['bos']}")
        else:
            lines.append("tokenizer: none copied (pass --tokenizer DIR)")
        path = checkpoint_io.save_params(out_dir, imported.params, imported.config, tokenizer_dir=tok_out,
                                         extra_items={checkpoint_io.VISION_EXTRA: imported.vision_extra}, **meta)
    cfg = imported.config
    n_params = sum(int(np.prod(np.shape(a))) for a in leaves(imported.params))
    lines.append(f"model: vision {cfg.vision.width}x{cfg.vision.depth} (runs {cfg.vision.num_blocks_run} blocks, "
                 f"{cfg.vision.hidden_act} GELU, {cfg.vision.image_size}px), llm {cfg.llm.hidden_size}x"
                 f"{cfg.llm.num_layers} vocab {cfg.llm.vocab_size}, {cfg.tokens_per_image} tokens per image, "
                 f"{n_params / 1e6:.1f}M parameters")
    extra = sorted(imported.vision_extra)
    lines.append(f"vision_extra: {', '.join(extra) if extra else 'none'}")
    lines.append(f"wrote {path}")
    return lines


def leaves(tree: dict):
    for value in tree.values():
        if isinstance(value, dict):
            yield from leaves(value)
        else:
            yield value
