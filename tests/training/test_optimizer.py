"""The learning-rate schedule, the weight-decay mask and AdamW + clipping against a NumPy transcription of
torch.optim.AdamW with clip_grad_norm_ (the reference's optimizer)."""

import math

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from oq2vl_jax.training import optimizer as opt

CFG = dict(lr=1e-2, weight_decay=0.1, b1=0.9, b2=0.999, eps=1e-8, warmup_ratio=0.03, clip_norm=1.0)


def test_schedule_matches_the_documented_formula():
    peak, total = 5e-5, 100
    w = opt.warmup_steps(total, 0.03)
    assert w == 3
    lrs = np.asarray([float(opt.lr_schedule(peak, total, 0.03)(k)) for k in range(total)])
    np.testing.assert_allclose(lrs[:3], [peak / 3, 2 * peak / 3, peak], rtol=1e-6)
    cosine = [peak * 0.5 * (1 + math.cos(math.pi * (k - w + 1) / (total - w + 1))) for k in range(w, total)]
    np.testing.assert_allclose(lrs[3:], cosine, rtol=1e-5, atol=1e-6 * peak)
    assert (lrs > 0).all() and lrs[0] > 0  # no zero-lr update at either end (the reference's first is 0)
    assert (np.diff(lrs[2:]) < 0).all()
    # the reference's multiplier curve, shifted: our warmup = its updates 1..W, our cosine = its shape
    reference = lambda k: k / w if k < w else 0.5 * (1 + math.cos(math.pi * (k - w) / (total - w)))  # noqa: E731
    np.testing.assert_allclose(lrs[:2] / peak, [reference(k + 1) for k in range(2)], rtol=1e-6)


def test_schedule_without_warmup_starts_near_peak():
    lrs = [float(opt.lr_schedule(1.0, 10, 0.0)(k)) for k in range(10)]
    assert 0.97 < lrs[0] < 1.0 and 0 < lrs[-1] < 0.03


@pytest.mark.parametrize("path, axes, expected", [
    ("llm/layers/q/kernel", ("layers", "embed", "q_heads"), True),
    ("llm/layers/q/bias", ("layers", "q_heads"), False),
    ("llm/layers/input_norm/scale", ("layers", "norm"), False),
    ("llm/norm/scale", ("norm",), False),
    ("llm/embed", ("vocab", "embed"), True),
    ("projector/fc1/bias", ("embed",), False),
    ("vision/patch_kernel", (None, None, None, "vision_embed"), True),
])
def test_decay_mask(path, axes, expected):
    assert opt.decays(path, axes) is expected


def torch_adamw_reference(params, grads_seq, lrs, wd, b1, b2, eps, max_norm):
    p = {k: v.astype(np.float64) for k, v in params.items()}
    m = {k: np.zeros_like(v) for k, v in p.items()}
    v = {k: np.zeros_like(x) for k, x in p.items()}
    for t, (grads, lr) in enumerate(zip(grads_seq, lrs), start=1):
        norm = math.sqrt(sum(float((g.astype(np.float64) ** 2).sum()) for g in grads.values()))
        coef = min(1.0, max_norm / (norm + 1e-6))
        for k in p:
            g = grads[k] * coef
            if k.endswith("kernel"):
                p[k] = p[k] * (1 - lr * wd)
            m[k] = b1 * m[k] + (1 - b1) * g
            v[k] = b2 * v[k] + (1 - b2) * g * g
            p[k] = p[k] - lr * (m[k] / (1 - b1 ** t)) / (np.sqrt(v[k] / (1 - b2 ** t)) + eps)
    return p


def test_adamw_with_clipping_matches_torch_semantics():
    rng = np.random.default_rng(0)
    params = {"kernel": rng.normal(size=(4, 3)).astype(np.float32), "bias": rng.normal(size=(3,)).astype(np.float32)}
    grads_seq = [{k: (rng.normal(size=x.shape) * s).astype(np.float32) for k, x in params.items()}
                 for s in (5.0, 0.1, 2.0)]  # the first and third are clipped
    total = 10
    tx = opt.make_optimizer(CFG, total, {"kernel": True, "bias": False})
    state, p = tx.init(params), jax.tree.map(jnp.asarray, params)
    for g in grads_seq:
        updates, state = tx.update(jax.tree.map(jnp.asarray, g), state, p)
        p = optax.apply_updates(p, updates)
    lrs = [float(opt.lr_schedule(CFG["lr"], total, CFG["warmup_ratio"])(k)) for k in range(3)]
    expected = torch_adamw_reference(params, grads_seq, lrs, CFG["weight_decay"], CFG["b1"], CFG["b2"], CFG["eps"],
                                     CFG["clip_norm"])
    for k in params:
        np.testing.assert_allclose(np.asarray(p[k]), expected[k], rtol=2e-5, atol=1e-6)
    assert int(opt.update_count(state)) == 3
