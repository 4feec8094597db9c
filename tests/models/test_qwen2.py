"""Qwen2 decoder parity with transformers.Qwen2ForCausalLM in float32 (tied and untied, 600-token prompt)."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import torch
from flax import nnx

from fixtures.model import hf_qwen2, hf_qwen2_meta, qwen2_tree, tiny_qwen2_config, to_numpy
from oq2vl_jax.models import params as P
from oq2vl_jax.models.presets import ModelOptions, llm_preset
from oq2vl_jax.models.qwen2 import Qwen2

PROMPT = 600  # long enough that a RoPE frequency or position bug shows


def _ours(cfg, tree, options=ModelOptions()):
    model = nnx.eval_shape(lambda: Qwen2(cfg, options, rngs=nnx.Rngs(0)))
    return P.load_params(model, tree)


@pytest.mark.parametrize("tied", [True, False])
def test_logits_match_transformers(tied):
    cfg = tiny_qwen2_config(tied)
    ref = hf_qwen2(cfg)
    ids = np.random.default_rng(0).integers(0, cfg.vocab_size, size=(2, PROMPT)).astype(np.int32)
    with torch.no_grad():
        want = to_numpy(ref(torch.from_numpy(ids).long()).logits)
    model = _ours(cfg, qwen2_tree(ref, cfg))
    positions = np.broadcast_to(np.arange(PROMPT, dtype=np.int32), ids.shape)
    got = np.asarray(jax.jit(lambda m, i, p: m(i, p, jnp.ones_like(i)))(model, ids, positions))
    assert np.abs(got - want).max() <= 1e-4


def test_positions_are_used_not_indices():
    """Shifting every position by a constant changes the logits only through RoPE (relative), so they stay equal;
    a wrong position source (e.g. token index) would not be invariant when positions restart mid-row."""
    cfg = tiny_qwen2_config(True)
    ref = hf_qwen2(cfg)
    model = _ours(cfg, qwen2_tree(ref, cfg))
    ids = np.random.default_rng(1).integers(0, cfg.vocab_size, size=(1, 64)).astype(np.int32)
    pos = np.arange(64, dtype=np.int32)[None]
    seg = np.ones_like(ids)
    a = np.asarray(model(ids, pos, seg))
    b = np.asarray(model(ids, pos + 100, seg))
    np.testing.assert_allclose(a, b, atol=2e-4)
    c = np.asarray(model(ids, pos * 2, seg))
    assert np.abs(a - c).max() > 1e-2


def test_remat_policies_do_not_change_values():
    cfg = tiny_qwen2_config(False)
    tree = qwen2_tree(hf_qwen2(cfg), cfg)
    ids = np.random.default_rng(2).integers(0, cfg.vocab_size, size=(1, 32)).astype(np.int32)
    pos, seg = np.arange(32, dtype=np.int32)[None], np.ones_like(ids)

    def loss(model):
        return jnp.mean(model(ids, pos, seg) ** 2)

    base = jax.grad(lambda m: loss(m))(_ours(cfg, tree))
    for policy in ("full", "save_attention"):
        g = jax.grad(lambda m: loss(m))(_ours(cfg, tree, ModelOptions(remat=policy)))
        for x, y in zip(jax.tree.leaves(nnx.state(base)), jax.tree.leaves(nnx.state(g))):
            np.testing.assert_allclose(np.asarray(x), np.asarray(y), rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("name", ["qwen2.5-0.5b", "qwen2.5-1.5b", "qwen2.5-3b", "qwen2.5-7b"])
def test_real_sizes_parameter_counts(name):
    """Our presets build exactly as many parameters as transformers does for the same sizes (HF on the meta
    device, tied embeddings counted once); nothing is allocated on either side."""
    cfg = llm_preset(name)
    model = nnx.eval_shape(lambda: Qwen2(cfg, ModelOptions(), rngs=nnx.Rngs(0)))
    ours = sum(int(np.prod(x.shape)) for x in jax.tree.leaves(nnx.state(model, nnx.Param)))
    with torch.device("meta"):
        ref = hf_qwen2_meta(cfg)
    theirs = sum(p.numel() for p in ref.parameters())  # parameters() yields a tied tensor once
    assert ours == theirs
    if name == "qwen2.5-1.5b":
        assert ours == 1_543_714_304


def test_prefill_then_decode_with_the_cache_equals_the_full_forward():
    """Ragged rows: a right-padded 4-token prefill, then one token per step through the same cached code path."""
    from oq2vl_jax.models.cache import KVCache

    cfg = llm_preset("qwen2-tiny")
    model = Qwen2(cfg, ModelOptions(attention="xla"), rngs=nnx.Rngs(0))
    b, length, prefill = 3, 10, 4
    ids = np.random.default_rng(1).integers(0, cfg.vocab_size, (b, length)).astype(np.int32)
    seg = (np.arange(length)[None] < np.array([[10], [6], [8]])).astype(np.int32)
    pos = np.broadcast_to(np.arange(length, dtype=np.int32), (b, length))
    want = np.asarray(model(ids, pos, seg))
    cache = KVCache.zeros(cfg, b, 16)
    h, cache = model.hidden_states(model.embed_tokens(ids[:, :prefill]), pos[:, :prefill], seg[:, :prefill], cache)
    got = [model.logits(h)]
    for t in range(prefill, length):
        h, cache = model.hidden_states(model.embed_tokens(ids[:, t:t + 1]), pos[:, t:t + 1], seg[:, t:t + 1], cache)
        got.append(model.logits(h))
    assert int(cache.end) == length
    real = seg.astype(bool)
    np.testing.assert_allclose(np.concatenate(got, axis=1)[real], want[real], atol=1e-5)
