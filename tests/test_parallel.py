"""Mesh construction, the logical-axis rules, batch placement and distributed start-up decisions (8 CPU devices)."""

import jax
import numpy as np
import pytest
from jax.sharding import PartitionSpec as P

from oq2vl_jax import parallel
from oq2vl_jax.errors import UserError
from oq2vl_jax.models import layers


def mesh_cfg(data=1, fsdp=1, tensor=1, **dcn):
    return dict(data=data, fsdp=fsdp, tensor=tensor, **dcn)


def test_mesh_fills_one_axis_and_uses_auto_axes():
    mesh = parallel.build_mesh(mesh_cfg(data=2, fsdp=-1, tensor=2))
    assert dict(mesh.shape) == {"data": 2, "fsdp": 2, "tensor": 2}
    assert all(t == jax.sharding.AxisType.Auto for t in mesh.axis_types)
    assert dict(parallel.build_mesh(mesh_cfg(fsdp=-1), jax.devices()[:4]).shape) == {"data": 1, "fsdp": 4,
                                                                                      "tensor": 1}


@pytest.mark.parametrize("cfg, field", [
    (mesh_cfg(data=3, fsdp=-1), "mesh"),             # 3 does not divide 8
    (mesh_cfg(data=2, fsdp=2, tensor=1), "-1"),      # uses 4 of 8 devices
    (mesh_cfg(data=-1, fsdp=-1), "at most one"),
])
def test_mesh_errors_name_the_fields(cfg, field):
    with pytest.raises(UserError, match=field):
        parallel.build_mesh(cfg)


def test_hybrid_shapes_split_ici_and_dcn():
    ici, dcn = parallel.mesh_shapes(mesh_cfg(data=1, fsdp=-1, dcn_data=-1), num_devices=64, num_granules=4)
    assert ici == (1, 16, 1) and dcn == (4, 1, 1)
    with pytest.raises(UserError, match="dcn"):
        parallel.mesh_shapes(mesh_cfg(fsdp=-1, dcn_data=3), num_devices=64, num_granules=4)


def test_rules_table_covers_every_model_axis_once():
    from oq2vl_jax.models.presets import ModelOptions
    from oq2vl_jax.training.state import ModelParts
    from fixtures.training import TINY

    names = {a for axes in ModelParts(TINY, ModelOptions()).logical_axes.values() for a in axes if a}
    assert names <= set(parallel.LOGICAL_AXIS_RULES)
    assert {"activation_batch", "activation_length", "activation_embed"} <= set(parallel.LOGICAL_AXIS_RULES)


def test_specs_fsdp_tensor_and_indivisible_fallback(caplog):
    mesh = parallel.build_mesh(mesh_cfg(data=1, fsdp=2, tensor=4))
    assert parallel.logical_to_spec(("layers", "embed", "mlp"), (28, 1536, 8960), mesh) == P(None, "fsdp", "tensor")
    # a kv dim of 6 does not divide tensor=4: replicated, logged once
    parallel._logged_fallbacks.clear()
    with caplog.at_level("INFO", logger="absl"):  # the convert CLI, run in-process by other tests, quiets "absl"
        assert parallel.logical_to_spec(("embed", "kv_heads"), (1536, 6), mesh) == P("fsdp", None)
        parallel.logical_to_spec(("embed", "kv_heads"), (1536, 6), mesh)
    assert sum("does not divide" in r.getMessage() for r in caplog.records) == 1
    # a mesh axis is used once per array: the second fsdp-mapped dim is left unsharded
    assert parallel.logical_to_spec(("vision_embed", "embed"), (1152, 1536), mesh) == P("fsdp", None)
    # batch over (data, fsdp); falls back to the longest dividing prefix
    mesh2 = parallel.build_mesh(mesh_cfg(data=2, fsdp=4))
    assert parallel.logical_to_spec(("activation_batch", None), (16, 3), mesh2) == P(("data", "fsdp"), None)
    assert parallel.logical_to_spec(("activation_batch", None), (2, 3), mesh2) == P("data", None)


def test_host_to_global_and_process_rows():
    mesh = parallel.build_mesh(mesh_cfg(data=2, fsdp=2, tensor=2))
    assert parallel.process_rows(mesh, 16) == (0, 16)  # one process feeds every row
    batch = {"x": np.arange(16 * 3, dtype=np.int32).reshape(16, 3), "y": np.ones((16, 2, 4), np.uint8)}
    out = parallel.host_to_global(batch, mesh, 16)
    assert out["x"].sharding.spec == P(("data", "fsdp"), None)
    assert out["y"].sharding.spec == P(("data", "fsdp"), None, None)
    np.testing.assert_array_equal(np.asarray(out["x"]), batch["x"])
    assert out["x"].addressable_shards[0].data.shape == (4, 3)


def test_activation_constraint_is_applied_under_the_context():
    mesh = parallel.build_mesh(mesh_cfg(data=2, fsdp=4))
    x = jax.device_put(np.zeros((8, 4, 16), np.float32), parallel.replicated(mesh))

    def f(x):
        return layers.constrain(x * 2, ("activation_batch", "activation_length", "activation_embed"))

    with layers.activation_sharding(parallel.activation_sharding_fn(mesh)):
        y = jax.jit(f)(x)
    assert y.sharding.is_equivalent_to(jax.sharding.NamedSharding(mesh, P(("data", "fsdp"))), 3)
    # without the context (a fresh function: jit's cache does not key on the context) there is no constraint
    assert "sharding_constraint" in jax.jit(f).lower(x).as_text()
    assert "sharding_constraint" not in jax.jit(lambda x: f(x)).lower(x).as_text()


def test_initialize_distributed_decisions(monkeypatch):
    for var in ("JAX_COORDINATOR_ADDRESS", "JAX_NUM_PROCESSES", "JAX_PROCESS_ID", "SLURM_JOB_ID", "SLURM_NTASKS",
                "TPU_WORKER_HOSTNAMES", "MEGASCALE_NUM_SLICES"):
        monkeypatch.delenv(var, raising=False)
    assert parallel.initialize_distributed("off") is False
    assert parallel.initialize_distributed("auto") is False  # nothing says "cluster"
    monkeypatch.setenv("SLURM_JOB_ID", "1")
    monkeypatch.setenv("SLURM_NTASKS", "1")
    assert parallel.initialize_distributed("auto") is False  # a one-task SLURM step is single-process
    monkeypatch.setenv("JAX_COORDINATOR_ADDRESS", "127.0.0.1:1")
    with pytest.raises(UserError, match="JAX_NUM_PROCESSES"):
        parallel.initialize_distributed("auto")
    with pytest.raises(UserError, match="auto, on or off"):
        parallel.initialize_distributed("sometimes")
