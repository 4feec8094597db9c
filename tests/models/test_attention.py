"""Every attention backend against a plain numpy reference on packed rows (3 documents + padding)."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.sharding import Mesh, NamedSharding, PartitionSpec as P

from oq2vl_jax.models.attention import attention, packed_lengths_and_offsets, resolve_backend

B, T, H, K, D = 2, 256, 4, 2, 32


def _inputs(seed=0):
    rng = np.random.default_rng(seed)
    q = rng.normal(size=(B, T, H, D)).astype(np.float32)
    k = rng.normal(size=(B, T, K, D)).astype(np.float32)
    v = rng.normal(size=(B, T, K, D)).astype(np.float32)
    seg = np.zeros((B, T), np.int32)
    seg[0, :90], seg[0, 90:200], seg[0, 200:230] = 1, 2, 3
    seg[1, :250] = 1
    return q, k, v, seg


def _numpy_reference(q, k, v, seg, causal):
    kr, vr = np.repeat(k, H // K, axis=2), np.repeat(v, H // K, axis=2)
    logits = np.einsum("bthd,bshd->bhts", q, kr) / np.sqrt(D)
    mask = seg[:, None, :, None] == seg[:, None, None, :]
    if causal:
        mask = mask & np.tril(np.ones((T, T), bool))
    logits = np.where(mask, logits, -np.inf)
    p = np.exp(logits - logits.max(-1, keepdims=True))
    p /= p.sum(-1, keepdims=True)
    return np.einsum("bhts,bshd->bthd", p, vr)


@pytest.mark.parametrize("causal", [True, False])
def test_xla_matches_numpy(causal):
    q, k, v, seg = _inputs()
    got = np.asarray(attention(q, k, v, seg, causal=causal, backend="xla"))
    want = _numpy_reference(q, k, v, seg, causal)
    real = seg > 0
    np.testing.assert_allclose(got[real], want[real], atol=1e-5)
    assert np.isfinite(got).all()  # padding rows attend to padding: finite, masked out of the loss


def test_splash_matches_xla_in_interpret_mode():
    """The TPU kernel itself, run by the Pallas interpreter on CPU: forward and gradients."""
    q, k, v, seg = _inputs(1)
    real = jnp.asarray(seg > 0)[:, :, None, None]

    def loss(backend, q, k, v):
        out = attention(q, k, v, seg, causal=True, backend=backend, splash_interpret=True)
        return jnp.sum(jnp.where(real, out, 0.0) ** 2), out

    (lx, ox), gx = jax.value_and_grad(lambda *a: loss("xla", *a), argnums=(0, 1, 2), has_aux=True)(q, k, v)
    (ls, os_), gs = jax.value_and_grad(lambda *a: loss("splash", *a), argnums=(0, 1, 2), has_aux=True)(q, k, v)
    np.testing.assert_allclose(np.asarray(os_)[seg > 0], np.asarray(ox)[seg > 0], atol=2e-5)
    for a, b in zip(gx, gs):
        np.testing.assert_allclose(np.asarray(b), np.asarray(a), atol=1e-4)


def test_splash_pads_lengths_that_are_not_whole_blocks():
    """SigLIP's 729 patches (here 100): bidirectional, no segments, padded to a block multiple inside the backend."""
    rng = np.random.default_rng(5)
    q, k, v = (rng.normal(size=(2, 100, 4, 16)).astype(np.float32) for _ in range(3))
    want = np.asarray(attention(q, k, v, None, causal=False, backend="xla"))
    got = np.asarray(attention(q, k, v, None, causal=False, backend="splash", splash_interpret=True))
    np.testing.assert_allclose(got, want, atol=2e-5)


def test_splash_under_shard_map_on_a_mesh():
    devices = np.array(jax.devices()[:4]).reshape(2, 1, 2)
    mesh = Mesh(devices, ("data", "fsdp", "tensor"))
    q, k, v, seg = _inputs(2)
    want = np.asarray(attention(q, k, v, seg, causal=True, backend="xla"))
    with jax.set_mesh(mesh):
        shard = lambda x, spec: jax.device_put(x, NamedSharding(mesh, spec))
        qs, ks, vs = (shard(x, P("data", None, "tensor", None)) for x in (q, k, v))
        got = jax.jit(lambda *a: attention(*a, causal=True, backend="splash", splash_interpret=True))(
            qs, ks, vs, shard(seg, P("data", None)))
    np.testing.assert_allclose(np.asarray(got)[seg > 0], want[seg > 0], atol=2e-5)


@pytest.mark.skipif(jax.default_backend() != "gpu", reason="cuDNN attention needs an NVIDIA GPU; checked by the "
                    "GPU job (benchmarks/gpu_run.sh, benchmarks/gpu_check.py) against xla")
@pytest.mark.parametrize("backend", ["cudnn", "cudnn_packed"])
def test_cudnn_matches_xla(backend):
    q, k, v, seg = (jnp.asarray(x, jnp.bfloat16) if x.dtype == np.float32 else x for x in _inputs(3))
    got = np.asarray(attention(q, k, v, seg, causal=True, backend=backend), np.float32)
    want = np.asarray(attention(q, k, v, seg, causal=True, backend="xla"), np.float32)
    np.testing.assert_allclose(got[seg > 0], want[seg > 0], atol=2e-2)


def test_packed_lengths_and_offsets_describe_documents():
    seg = np.array([[1, 1, 1, 2, 2, 3, 0, 0], [1, 1, 1, 1, 1, 1, 1, 1]], np.int32)
    lengths, offsets = packed_lengths_and_offsets(jnp.asarray(seg), 4)
    np.testing.assert_array_equal(lengths, [[3, 2, 1, -1], [8, -1, -1, -1]])
    np.testing.assert_array_equal(offsets, [[0, 3, 5, -1, -1], [0, -1, -1, -1, -1]])


def test_auto_picks_by_platform():
    assert resolve_backend("auto") == {"gpu": "cudnn", "tpu": "splash"}.get(jax.default_backend(), "xla")
    assert resolve_backend("xla") == "xla"
    with pytest.raises(ValueError, match="unknown attention backend"):
        attention(*_inputs()[:3], None, causal=True, backend="flash")


def test_cached_form_with_the_queries_as_keys_equals_the_training_form():
    """Separate key segments/positions (the KV-cache form): same document, key position <= query position, key not
    padding. With keys = queries it is the causal segment mask on every real query."""
    q, k, v, seg = _inputs()
    pos = np.broadcast_to(np.arange(T, dtype=np.int32), (B, T))
    got = np.asarray(attention(q, k, v, seg, causal=True, kv_segment_ids=seg, q_positions=pos, kv_positions=pos))
    real = seg > 0
    np.testing.assert_allclose(got[real], _numpy_reference(q, k, v, seg, causal=True)[real], atol=1e-5)
    # slots out of order: keys shuffled along S with their segments and positions -> the same output
    perm = np.random.default_rng(1).permutation(T)
    shuffled = attention(q, k[:, perm], v[:, perm], seg, causal=True, kv_segment_ids=seg[:, perm], q_positions=pos,
                         kv_positions=pos[:, perm])
    np.testing.assert_allclose(np.asarray(shuffled)[real], got[real], atol=1e-5)
