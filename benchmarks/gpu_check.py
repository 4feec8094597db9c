"""Attention backends on the GPU: correctness against xla and forward+backward timing, at the decoder's real shapes
(B=2 rows of 4096 tokens, ~25 documents a row, 12 query heads, 2 KV heads, head dim 128, bf16).

  python benchmarks/gpu_check.py [--tiny] [--json OUT.jsonl]   # --tiny: small shapes, xla only (checks the script
                                                                 # on CPU)

Prints one JSON line per backend: max |diff| vs xla on real positions (forward output and dq), fwd and fwd+bwd ms.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time

import jax
import jax.numpy as jnp
import numpy as np

sys.path.insert(0, os.path.join(os.path.dirname(__file__), ".."))
from oq2vl_jax.models.attention import attention  # noqa: E402


def packed_segments(b: int, t: int, rng) -> np.ndarray:
    seg = np.zeros((b, t), np.int32)
    for r in range(b):
        start, doc = 0, 0
        while True:
            n = int(rng.integers(150, 180))
            if start + n > t - 40:
                break
            doc += 1
            seg[r, start:start + n] = doc
            start += n
    return seg


def timed(fn, *args, reps=10):
    out = fn(*args)
    jax.block_until_ready(out)
    t0 = time.perf_counter()
    for _ in range(reps):
        out = fn(*args)
    jax.block_until_ready(out)
    return (time.perf_counter() - t0) / reps * 1e3, out


def main(argv=None):
    ap = argparse.ArgumentParser()
    ap.add_argument("--tiny", action="store_true")
    ap.add_argument("--json", help="also write the JSON lines here")
    args = ap.parse_args(argv)
    b, t, h, k, d = (2, 256, 4, 2, 32) if args.tiny else (2, 4096, 12, 2, 128)
    backends = ["xla"] if args.tiny else ["xla", "cudnn", "cudnn_packed"]
    rng = np.random.default_rng(0)
    dtype = jnp.float32 if args.tiny else jnp.bfloat16
    q, kk, v = (jnp.asarray(rng.normal(size=(b, t, n, d)), dtype) for n in (h, k, k))
    seg = jnp.asarray(packed_segments(b, t, rng))
    real = np.asarray(seg) > 0
    results, ref = [], None
    for backend in backends:
        fwd = jax.jit(lambda q, k, v, s, be=backend: attention(q, k, v, s, causal=True, backend=be))
        loss = lambda q, k, v, s, be=backend: jnp.sum(
            jnp.where((s > 0)[:, :, None, None], attention(q, k, v, s, causal=True, backend=be), 0).astype(
                jnp.float32) ** 2)
        grad = jax.jit(jax.grad(loss, argnums=(0, 1, 2)))
        try:
            fwd_ms, out = timed(fwd, q, kk, v, seg)
            bwd_ms, grads = timed(grad, q, kk, v, seg)
        except Exception as e:  # report and go on: one failing backend must not hide the others
            results.append({"case": "decoder", "backend": backend, "error": f"{type(e).__name__}: {str(e)[:300]}"})
            continue
        out, dq = np.asarray(out, np.float32), np.asarray(grads[0], np.float32)
        if ref is None:
            ref = (out, dq)
        results.append({"case": "decoder", "backend": backend, "fwd_ms": round(fwd_ms, 3), "fwd_bwd_ms": round(bwd_ms, 3),
                        "max_diff_out": float(np.abs(out[real] - ref[0][real]).max()),
                        "max_diff_dq": float(np.abs(dq[real] - ref[1][real]).max()),
                        "device": jax.devices()[0].device_kind, "jax": jax.__version__})
    results += vision_case(args.tiny)
    for r in results:
        print(json.dumps(r))
    if args.json:
        with open(args.json, "w") as f:
            f.writelines(json.dumps(r) + "\n" for r in results)
    return results


def vision_case(tiny: bool) -> list[dict]:
    """SigLIP's shape: 729 patches (not a multiple of 64/128), 16 heads of 72, bidirectional, no segments."""
    n, t, h, d = (2, 49, 4, 8) if tiny else (32, 729, 16, 72)
    rng = np.random.default_rng(1)
    dtype = jnp.float32 if tiny else jnp.bfloat16
    q, k, v = (jnp.asarray(rng.normal(size=(n, t, h, d)), dtype) for _ in range(3))
    out, ref = [], None
    for backend in (["xla"] if tiny else ["xla", "cudnn"]):
        fn = jax.jit(lambda q, k, v, be=backend: attention(q, k, v, None, causal=False, backend=be))
        try:
            ms, o = timed(fn, q, k, v)
        except Exception as e:
            out.append({"case": "vision", "backend": backend, "error": f"{type(e).__name__}: {str(e)[:300]}"})
            continue
        o = np.asarray(o, np.float32)
        ref = o if ref is None else ref
        out.append({"case": "vision", "backend": backend, "fwd_ms": round(ms, 3),
                    "max_diff_out": float(np.abs(o - ref).max())})
    return out


if __name__ == "__main__":
    main()
