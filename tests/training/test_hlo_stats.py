"""Reading compiled programs (training/hlo_stats.py): matmul FLOPs and collective bytes with loop trip counts, on
small programs whose answers are known."""

import re

import jax
import jax.numpy as jnp
import numpy as np
from jax.sharding import NamedSharding, PartitionSpec as P

from oq2vl_jax.training import hlo_stats


def _scan_matmuls(steps: int, m: int, k: int, n: int):
    def f(x, ws):
        def body(h, w):
            return jnp.tanh(h @ w), None
        return jax.lax.scan(body, x, ws)[0]
    x = jnp.ones((m, k), jnp.float32)
    ws = jnp.ones((steps, k, n), jnp.float32)
    return jax.jit(f).lower(x, ws).compile().as_text()


def test_flops_count_every_loop_trip():
    text = _scan_matmuls(steps=5, m=16, k=32, n=32)
    stats = hlo_stats.analyze(text, 1)
    assert stats.flops == 5 * 2 * 16 * 32 * 32
    assert [loop.trip_count for loop in stats.loops] == [5] and stats.unknown_trip_counts == 0


def test_trip_count_from_the_condition_when_none_is_recorded():
    """TPU programs carry no known_trip_count: the `i < N` compare of the loop condition gives it."""
    text = re.sub(r'"known_trip_count":\{"n":"\d+"\},?', "", _scan_matmuls(steps=7, m=8, k=16, n=16))
    assert "known_trip_count" not in text
    stats = hlo_stats.analyze(text, 1)
    assert stats.flops == 7 * 2 * 8 * 16 * 16 and stats.unknown_trip_counts == 0


def test_collective_bytes_by_kind_with_trip_counts():
    mesh = jax.sharding.Mesh(np.array(jax.devices()[:8]), ("fsdp",))
    w_sharding = NamedSharding(mesh, P(None, "fsdp", None))  # [layers, 64, 32] sharded on its rows

    def f(x, ws):
        def body(h, w):
            w = jax.lax.with_sharding_constraint(w, NamedSharding(mesh, P()))  # gathered per layer
            return h @ w, None
        return jnp.sum(jax.lax.scan(body, x, ws)[0])

    x = jax.ShapeDtypeStruct((8, 64), jnp.float32, sharding=NamedSharding(mesh, P("fsdp", None)))
    ws = jax.ShapeDtypeStruct((3, 64, 64), jnp.float32, sharding=w_sharding)
    text = jax.jit(f).lower(x, ws).compile().as_text()
    stats = hlo_stats.analyze(text, 8)
    gathered = stats.bytes_by_kind()["all-gather"]
    # each layer's weight once (in the loop, or the stack hoisted out of it), (n-1)/n of it over the links
    assert gathered == 3 * 64 * 64 * 4 * 7 / 8
    assert sum(c.count * c.shape.elements for c in stats.collectives if c.kind == "all-gather") == 3 * 64 * 64


def test_parse_shapes_and_group_sizes():
    assert hlo_stats.shapes_in("(bf16[2,3]{1,0}, f32[])") == [hlo_stats.Shape("bf16", (2, 3)),
                                                            hlo_stats.Shape("f32", ())]
    assert hlo_stats._group_size("replica_groups=[2,4]<=[8]", 8) == 4
    assert hlo_stats._group_size("replica_groups={{0,1},{2,3}}", 8) == 2
    assert hlo_stats._group_size("replica_groups=mesh['axis_0'=2,'axis_1'=4] {'axis_1'}", 8) == 4
    assert hlo_stats._group_size("replica_groups=mesh['axis_0'=4,'axis_1'=2], device_ids=([2,4]T(1,0)) "
                                 "{'axis_0'}", 8) == 4
