"""oq2vl_jax checkpoints (ours or the trainer's) -> prismatic / hf-llava / hf-qwen2 directories."""

from __future__ import annotations

import json
import os
import shutil

import ml_dtypes
import numpy as np

from oq2vl_jax import checkpoint_io
from oq2vl_jax.convert import llava, prismatic
from oq2vl_jax.errors import UserError
from oq2vl_jax.models.presets import VLMConfig
from oq2vl_jax.pretrained import hf, importer, tensor_files
from oq2vl_jax.text import tokens

FORMATS = ("prismatic", "hf-llava", "hf-qwen2")
DTYPES = {"fp32": np.float32, "bf16": ml_dtypes.bfloat16}


def load_checkpoint(ckpt_dir: str, step: int | None = None) -> tuple[VLMConfig, dict, dict | None, dict, int]:
    """(config, params as numpy, vision_extra or None, meta, step) of any oq2vl_jax checkpoint step."""
    step = checkpoint_io.resolve_step(ckpt_dir, step)
    config, params, meta = checkpoint_io.load_params(ckpt_dir, step)
    _to_numpy(params)
    extra = checkpoint_io.load_item(ckpt_dir, checkpoint_io.VISION_EXTRA, step)
    if extra is None:  # trainer steps do not carry it; the import step of the same run does
        with checkpoint_io.manager(ckpt_dir, async_save=False) as mngr:
            for other in sorted(mngr.all_steps()):
                try:
                    extra = checkpoint_io.load_item(ckpt_dir, checkpoint_io.VISION_EXTRA, other)
                except checkpoint_io.DamagedCheckpoint:
                    continue  # another step's damage does not matter here
                if extra is not None:
                    break
    return config, params, extra, meta, step


def _to_numpy(tree: dict) -> dict:
    """In place, so each restored (possibly jax) array is released as soon as its numpy copy exists."""
    for key, value in tree.items():
        tree[key] = _to_numpy(value) if isinstance(value, dict) else np.asarray(value)
    return tree


def vision_extra_from(src: str, config: VLMConfig) -> dict:
    overrides = {k: getattr(config.vision, k) for k in importer.VISION_OVERRIDABLE}
    cfg, _, extra, _ = importer.load_vision(src, overrides=overrides)
    if cfg != config.vision:
        raise UserError(f"--vision '{src}' is a different tower ({cfg}) from the checkpoint's ({config.vision})")
    return extra


def _check_out(out_dir: str) -> None:
    if os.path.exists(out_dir) and not os.path.isdir(out_dir):
        raise UserError(f"--out '{out_dir}' is a file; give a new directory to write the export into")


def _prepare_out(out_dir: str) -> None:
    _check_out(out_dir)
    if os.path.isdir(out_dir) and os.listdir(out_dir):
        raise UserError(f"output '{out_dir}' exists and is not empty; choose a new directory")
    os.makedirs(out_dir, exist_ok=True)


def export_hf_qwen2(out_dir: str, config: VLMConfig, params: dict, *, dtype, tokenizer_dir: str | None,
                    llm_hf_config: dict | None) -> list[str]:
    cfg = config.llm
    files = tensor_files.write_safetensors(out_dir, hf.qwen2_to_hf(params.pop("llm"), cfg, prefix="model.",
                                                         lm_head=None if cfg.tie_word_embeddings else "lm_head.weight",
                                                         consume=True), dtype=dtype)
    hf_config = hf.qwen2_config_to_hf(cfg, llm_hf_config, dtype="bfloat16" if dtype == DTYPES["bf16"] else "float32")
    if tokenizer_dir is not None:
        ids = tokens.token_ids(tokens.open_tokenizer(tokenizer_dir))
        hf_config.setdefault("eos_token_id", ids["eos"])
        hf_config.setdefault("pad_token_id", ids["pad"])
        for name in os.listdir(tokenizer_dir):
            shutil.copy(os.path.join(tokenizer_dir, name), out_dir)
    with open(os.path.join(out_dir, "config.json"), "w") as f:
        json.dump(hf_config, f, indent=2)
    return [f"hf-qwen2: {len(files)} weight file(s), {'tied' if cfg.tie_word_embeddings else 'untied'} embeddings"
            + ("" if tokenizer_dir else "; no tokenizer in the checkpoint")]


def export(ckpt_dir: str, to: str, out_dir: str, *, dtype: str = "fp32", step: int | None = None,
           with_vision: bool = False, vision_src: str | None = None, model_id: str | None = None,
           mount_path: str = "Qwen") -> list[str]:
    if to not in FORMATS:
        raise UserError(f"unknown export format '{to}'; choose one of {list(FORMATS)}")
    if dtype not in DTYPES:
        raise UserError(f"unknown dtype '{dtype}'; choose one of {list(DTYPES)}")
    _check_out(out_dir)  # before minutes of reading
    try:
        config, params, extra, meta, step = load_checkpoint(ckpt_dir, step)
    except checkpoint_io.DamagedCheckpoint as e:
        raise UserError(f"{e}; export another step with --step N") from e
    if to == "hf-llava":
        llava.check_exportable(config)  # before writing anything
    if vision_src is not None and to != "hf-qwen2":
        extra = vision_extra_from(vision_src, config)
    _prepare_out(out_dir)
    tok = checkpoint_io.tokenizer_path(ckpt_dir)
    llm_hf_config = meta.get("llm_hf_config")
    np_dtype = DTYPES[dtype]
    lines = [f"read {ckpt_dir} step {step} ({config.tokens_per_image} tokens per image)"]
    if to == "prismatic":
        lines += prismatic.export(out_dir, config, params, extra, dtype=np_dtype, with_vision=with_vision,
                                  tokenizer_dir=tok, llm_hf_config=llm_hf_config,
                                  model_id=model_id or prismatic.DEFAULT_MODEL_ID, mount_path=mount_path)
    elif to == "hf-llava":
        contract, warning = checkpoint_io.prompt_contract(meta)
        if warning:
            lines.append(f"warning: {warning}")
        lines += llava.export(out_dir, config, params, extra, dtype=np_dtype, tokenizer_dir=tok,
                              llm_hf_config=llm_hf_config, contract=contract)
    else:
        lines += export_hf_qwen2(out_dir, config, params, dtype=np_dtype, tokenizer_dir=tok,
                                 llm_hf_config=llm_hf_config)
    lines.append(f"wrote {out_dir} ({dtype})")
    return lines
