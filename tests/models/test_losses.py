import jax
import jax.numpy as jnp
import numpy as np
import pytest

from oq2vl_jax.models.losses import chunked_cross_entropy


def _dense(hidden, kernel, targets, weights):
    logits = hidden @ kernel.T
    nll = jax.nn.logsumexp(logits, -1) - jnp.take_along_axis(logits, targets[:, None], -1)[:, 0]
    return jnp.sum(nll * weights)


@pytest.mark.parametrize("chunk", [1, 5, 16, 64])
def test_value_and_gradient_equal_dense_for_any_chunk(chunk):
    rng = np.random.default_rng(0)
    h = jnp.asarray(rng.normal(size=(37, 8)), jnp.float32)
    w = jnp.asarray(rng.normal(size=(50, 8)), jnp.float32)
    t = jnp.asarray(rng.integers(0, 50, 37), jnp.int32)
    lw = jnp.asarray(rng.random(37) < 0.6, jnp.float32)
    f = lambda h, w: chunked_cross_entropy(h, w, "vd", t, lw, chunk)[0]
    np.testing.assert_allclose(f(h, w), _dense(h, w, t, lw), rtol=1e-6)
    for a, b in zip(jax.grad(f, (0, 1))(h, w), jax.grad(lambda h, w: _dense(h, w, t, lw), (0, 1))(h, w)):
        np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6)
    got_dv = chunked_cross_entropy(h, w.T, "dv", t, lw, chunk)
    np.testing.assert_allclose(got_dv[0], f(h, w), rtol=1e-6)
    assert float(got_dv[1]) == float(lw.sum())


def test_full_logits_are_never_materialised():
    """The only [*, vocab] values in the jaxpr are one chunk's."""
    h, w = jnp.zeros((4096, 8)), jnp.zeros((1000, 8))
    t, lw = jnp.zeros(4096, jnp.int32), jnp.ones(4096)
    jaxpr = jax.make_jaxpr(lambda h, w: jax.grad(
        lambda h: chunked_cross_entropy(h, w, "vd", t, lw, 256)[0])(h))(h, w)
    shapes = {tuple(v.aval.shape) for eqn in jaxpr.jaxpr.eqns for v in eqn.outvars if hasattr(v.aval, "shape")}
    assert (4096, 1000) not in shapes
