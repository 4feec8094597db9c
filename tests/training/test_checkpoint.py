"""Training checkpoints: restore onto a different mesh and continue, item contents, the shared checkpoint_io layout,
the process-count rule for data state, and a save killed mid-write never being picked up."""

import os
import signal
import subprocess
import sys
import textwrap

import jax
import numpy as np
import pytest

from oq2vl_jax import checkpoint_io, parallel
from oq2vl_jax.errors import UserError
from oq2vl_jax.training import optimizer as optim_lib
from oq2vl_jax.training import state as state_lib
from oq2vl_jax.training.checkpoint import Checkpointer
from oq2vl_jax.training.state import TrainState
from oq2vl_jax.training.step import make_train_step
from fixtures.training import FAST_COMPILE, OPTIM, TINY, build, random_host_params, synthetic_batch, tiny_options

META = checkpoint_io.make_meta(TINY, stage="pretrain")


@pytest.fixture(scope="module")
def saved(tmp_path_factory):
    """Two steps on (2 data x 4 fsdp), saved at step 2; also the loss of step 3 on that mesh."""
    directory = str(tmp_path_factory.mktemp("ckpt"))
    mesh, state, step = build(random_host_params(), (2, 4, 1), jax.devices())
    for i in range(2):
        state, _ = step(state, parallel.host_to_global(synthetic_batch(16, seed=i), mesh, 16))
    ckpt = Checkpointer(directory, keep=2)
    ckpt.save(state, {"index": 2}, META)
    ckpt.wait()
    params = jax.device_get(state_lib.merge_params(state.trainable, state.frozen))
    opt_state = jax.device_get(state.opt_state)
    _, metrics = step(state, parallel.host_to_global(synthetic_batch(16, seed=2), mesh, 16))
    ckpt.close()
    return directory, params, opt_state, float(metrics["loss"])


def _restore_target(mesh):
    """(model parts, optimizer, abstract state, shardings) of the saved run's "pretrain" stage on `mesh`."""
    parts = state_lib.ModelParts(TINY, tiny_options())
    trainable, _ = state_lib.split_params(parts.abstract_params, "pretrain")
    tx = optim_lib.make_optimizer(OPTIM, 10, parts.decay_mask(trainable))
    abstract, shardings = state_lib.abstract_state(parts, "pretrain", "bfloat16", tx, mesh)
    return parts, tx, abstract, shardings


def test_restore_on_four_devices_and_continue(saved):
    directory, params, opt_state, next_loss = saved
    mesh = parallel.build_mesh(dict(data=2, fsdp=2, tensor=1), jax.devices()[:4])
    parts, tx, abstract, shardings = _restore_target(mesh)
    ckpt = Checkpointer(directory)
    state, data_state, info = ckpt.restore(abstract, "pretrain")
    ckpt.close()
    assert data_state == {"index": 2} and info["step"] == 2 and int(state.step) == 2
    restored = state_lib.merge_params(state.trainable, state.frozen)
    jax.tree.map(lambda a, b: np.testing.assert_array_equal(np.asarray(a), b), restored, params)
    jax.tree.map(lambda a, b: np.testing.assert_array_equal(np.asarray(a), b), state.opt_state, opt_state)
    embed = state.trainable["llm"]["embed"]
    assert embed.sharding.mesh.devices.size == 4 and embed.sharding.spec == shardings.trainable["llm"]["embed"].spec
    assert state.frozen["vision"]["pos_embed"].dtype == np.dtype("bfloat16")
    step = make_train_step(parts, tx, mesh, micro_batches=1, state_shardings=shardings, compiler_options=FAST_COMPILE,
                           lr_fn=optim_lib.lr_schedule(OPTIM["lr"], 10, OPTIM["warmup_ratio"]))
    state, metrics = step(state, parallel.host_to_global(synthetic_batch(16, seed=2), mesh, 16))
    np.testing.assert_allclose(float(metrics["loss"]), next_loss, rtol=2e-5)
    assert int(state.step) == 3


def test_layout_is_readable_by_checkpoint_io(saved, tmp_path):
    directory, params, _, _ = saved
    config, loaded, meta = checkpoint_io.load_params(directory)
    assert config == TINY and meta["stage"] == "pretrain"
    jax.tree.map(lambda a, b: np.testing.assert_array_equal(np.asarray(a), b), loaded, params)
    assert {"data", "meta", "opt_state", "params", "train"} <= set(os.listdir(os.path.join(directory, "2")))
    assert "process_0-of-1.json" in os.listdir(os.path.join(directory, "2", "data"))


def test_data_state_needs_the_same_process_count(saved, tmp_path):
    directory, _, _, _ = saved
    mesh = parallel.build_mesh(dict(data=1, fsdp=1, tensor=1), jax.devices()[:1])
    _, _, abstract, _ = _restore_target(mesh)
    ckpt = Checkpointer(directory)
    state, _, _ = ckpt.restore(abstract, "pretrain", restore_data=False)
    # a checkpoint claiming 2 writer processes cannot hand this single process a data state
    ckpt.save(state.replace(step=state.step + 1), {"index": 2}, META, train_info={"process_count": 2})
    ckpt.wait()
    with pytest.raises(UserError, match="restore_data=False"):
        ckpt.restore(abstract, "pretrain", 3)
    _, data_state, _ = ckpt.restore(abstract, "pretrain", 3, restore_data=False)
    assert data_state is None
    ckpt.close()


KILLED_SAVE = textwrap.dedent("""
    import os, signal, sys
    import jax, jax.numpy as jnp
    from oq2vl_jax.training.checkpoint import Checkpointer
    from oq2vl_jax.training.state import TrainState
    big = jnp.arange(48 * 1024 * 1024, dtype=jnp.float32)
    scalar = lambda v: jnp.asarray(v, jnp.int32)
    state = TrainState(step=scalar(1), trainable={"projector": big[:8], "llm": big}, frozen={"vision": big[:4]},
                       opt_state={"mu": big}, nonfinite_in_row=scalar(0), nonfinite_total=scalar(0))
    ckpt = Checkpointer(sys.argv[1])
    ckpt.save(state, {"index": 1}, {"format": "x"})
    ckpt.wait()
    ckpt.save(state.replace(step=scalar(2)), {"index": 2}, {"format": "x"})  # async: returns while writing
    os.kill(os.getpid(), signal.SIGKILL)
""")


def test_save_killed_mid_write_is_never_the_latest(tmp_path):
    directory = str(tmp_path / "ckpt")
    proc = subprocess.run([sys.executable, "-c", KILLED_SAVE, directory], env={**os.environ, "XLA_FLAGS": ""},
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == -signal.SIGKILL, proc.stderr[-2000:]
    leftovers = os.listdir(directory)
    assert "1" in leftovers and "2" not in leftovers
    assert any(name.startswith("2.orbax-checkpoint-tmp") for name in leftovers), leftovers  # killed mid-write
    ckpt = Checkpointer(directory)
    assert ckpt.latest_step() == 1 and ckpt.all_steps() == [1]
    # the resumed run saves step 2 again: the leftover is removed first (Orbax awaits its tmp-dir cleanup in save)
    scalar = lambda v: jax.numpy.asarray(v, jax.numpy.int32)  # noqa: E731
    small = jax.numpy.zeros((4,), jax.numpy.float32)
    state = TrainState(step=scalar(2), trainable={"projector": small, "llm": small}, frozen={"vision": small},
                       opt_state={"mu": small}, nonfinite_in_row=scalar(0), nonfinite_total=scalar(0))
    ckpt.save(state, {"index": 2}, {"format": "x"})
    ckpt.close()
    assert sorted(os.listdir(directory)) == ["1", "2"]
