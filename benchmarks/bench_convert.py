"""Peak memory and time of full-size conversions (Qwen2.5-1.5B + SigLIP So400m/14@384 shapes, random weights).

Writes the sources first (an HF Qwen2 directory in bf16, as released, and a timm-named So400m .safetensors in fp32),
then runs each CLI form in its own process and reports that process's peak RSS:

  python benchmarks/bench_convert.py [--workdir DIR] [--keep]

Needs ~30 GB of disk. The full-size checkpoint holds 1.9B fp32 parameters (7.6 GB): peak RSS near that means
tensors are never held twice.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time

import ml_dtypes
import numpy as np

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from oq2vl_jax.demo.shapes import build_tiny_tokenizer  # noqa: E402
from oq2vl_jax.models.presets import llm_preset, vision_preset  # noqa: E402
from oq2vl_jax.pretrained import hf, tensor_files  # noqa: E402


def _random(rng, shape, dtype):
    return rng.standard_normal(shape, dtype=np.float32).astype(dtype, copy=False) * np.asarray(0.02, dtype)


def write_qwen2(path: str, rng) -> None:
    cfg = llm_preset("qwen2.5-1.5b")
    d, qd, kvd, f = cfg.hidden_size, cfg.num_heads * cfg.head_dim, cfg.num_kv_heads * cfg.head_dim, \
        cfg.intermediate_size
    bf16 = ml_dtypes.bfloat16

    def tensors():
        yield "model.embed_tokens.weight", _random(rng, (cfg.vocab_size, d), bf16)
        for i in range(cfg.num_layers):
            p = f"model.layers.{i}."
            for name, shape in (("self_attn.q_proj.weight", (qd, d)), ("self_attn.q_proj.bias", (qd,)),
                                ("self_attn.k_proj.weight", (kvd, d)), ("self_attn.k_proj.bias", (kvd,)),
                                ("self_attn.v_proj.weight", (kvd, d)), ("self_attn.v_proj.bias", (kvd,)),
                                ("self_attn.o_proj.weight", (d, qd)), ("mlp.gate_proj.weight", (f, d)),
                                ("mlp.up_proj.weight", (f, d)), ("mlp.down_proj.weight", (d, f)),
                                ("input_layernorm.weight", (d,)), ("post_attention_layernorm.weight", (d,))):
                yield p + name, _random(rng, shape, bf16)
        yield "model.norm.weight", _random(rng, (d,), bf16)

    tensor_files.write_safetensors(path, tensors(), max_shard_bytes=2 << 30)
    config = hf.qwen2_config_to_hf(cfg, dtype="bfloat16")
    config.update(max_position_embeddings=32768, bos_token_id=151643, eos_token_id=151645)
    with open(os.path.join(path, "config.json"), "w") as f:
        json.dump(config, f, indent=2)


def write_so400m(path: str, rng) -> None:
    cfg = vision_preset("siglip-so400m-384")
    d, f, p = cfg.width, cfg.mlp_dim, cfg.patch_size

    def tensors():
        yield "patch_embed.proj.weight", _random(rng, (d, 3, p, p), np.float32)
        yield "patch_embed.proj.bias", _random(rng, (d,), np.float32)
        yield "pos_embed", _random(rng, (1, cfg.num_patches, d), np.float32)
        for i in range(cfg.depth):
            b = f"blocks.{i}."
            for name, shape in (("norm1", (d,)), ("attn.qkv", (3 * d, d)), ("attn.proj", (d, d)), ("norm2", (d,)),
                                ("mlp.fc1", (f, d)), ("mlp.fc2", (d, f))):
                yield b + name + ".weight", _random(rng, shape, np.float32)
                yield b + name + ".bias", _random(rng, shape[:1], np.float32)
        yield "norm.weight", _random(rng, (d,), np.float32)
        yield "norm.bias", _random(rng, (d,), np.float32)
        yield "attn_pool.latent", _random(rng, (1, 1, d), np.float32)
        for name, shape in (("q", (d, d)), ("kv", (2 * d, d)), ("proj", (d, d)), ("norm", (d,)),
                            ("mlp.fc1", (f, d)), ("mlp.fc2", (d, f))):
            yield f"attn_pool.{name}.weight", _random(rng, shape, np.float32)
            yield f"attn_pool.{name}.bias", _random(rng, shape[:1], np.float32)

    os.makedirs(path, exist_ok=True)
    tensor_files.write_safetensors(path, tensors(), basename="open_clip_model", max_shard_bytes=8 << 30)


def run(argv: list[str]) -> tuple[float, float, str]:
    """(seconds, peak RSS in GiB, stdout) of one CLI call in a fresh process (its own rusage via wait4)."""
    start = time.time()
    with tempfile.TemporaryFile("w+") as out, tempfile.TemporaryFile("w+") as err:
        proc = subprocess.Popen([sys.executable, "-m", "oq2vl_jax.convert", *argv], stdout=out, stderr=err,
                                env={**os.environ, "JAX_PLATFORMS": "cpu"})
        _, status, usage = os.wait4(proc.pid, 0)
        proc.returncode = os.waitstatus_to_exitcode(status)
        out.seek(0), err.seek(0)
        stdout, stderr = out.read(), err.read()
    if proc.returncode != 0:
        raise SystemExit(f"{' '.join(argv)} failed:\n{stderr}")
    return time.time() - start, usage.ru_maxrss / 2**20, stdout


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--workdir", help="where to write (default: a temporary directory)")
    parser.add_argument("--keep", action="store_true", help="keep the written files")
    args = parser.parse_args()
    work = args.workdir or tempfile.mkdtemp(prefix="bench_convert_")
    rng = np.random.default_rng(0)
    qwen, vision = os.path.join(work, "qwen2.5-1.5b"), os.path.join(work, "so400m")
    t = time.time()
    if not os.path.isfile(os.path.join(qwen, "config.json")):  # reuse the sources of an earlier --keep run
        write_qwen2(qwen, rng)
    if not os.path.isfile(os.path.join(vision, "open_clip_model.safetensors")):
        write_so400m(vision, rng)
    tok = build_tiny_tokenizer(os.path.join(work, "tokenizer"), ["True False Yes No " * 40], vocab_size=400)
    print(f"sources ready in {time.time() - t:.0f}s")
    for name in ("ck", "pr", "ll", "q2"):
        shutil.rmtree(os.path.join(work, name), ignore_errors=True)
    ck = os.path.join(work, "ck")
    forms = [("import (HF Qwen2 bf16 + timm So400m, --pool 729)",
              ["import", "--llm", qwen, "--vision", vision, "--tokenizer", tok, "--out", ck, "--pool", "729"]),
             ("export --to prismatic --with-vision",
              ["export", "--ckpt", ck, "--to", "prismatic", "--with-vision", "--out", os.path.join(work, "pr")]),
             ("export --to hf-llava", ["export", "--ckpt", ck, "--to", "hf-llava", "--out", os.path.join(work, "ll")]),
             ("export --to hf-qwen2 --dtype bf16",
              ["export", "--ckpt", ck, "--to", "hf-qwen2", "--dtype", "bf16", "--out", os.path.join(work, "q2")])]
    print(f"{'conversion':<55} {'seconds':>8} {'peak RSS GiB':>13}")
    for name, argv in forms:
        seconds, rss, _ = run(argv)
        print(f"{name:<55} {seconds:8.0f} {rss:13.2f}", flush=True)
    if not args.keep:
        shutil.rmtree(work)


if __name__ == "__main__":
    main()
