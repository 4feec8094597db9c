"""The training loop: in-process runs on synthetic data (metrics, eval, resume, non-finite stop, config errors) and
the CLI in subprocesses on the demo data: SIGTERM -> checkpoint + exit 0, kill -9 -> exact resume, every step once."""

from __future__ import annotations

import os
import signal
import subprocess

import jax
import numpy as np
import pytest

from oq2vl_jax.errors import UserError
from oq2vl_jax.training import loop, metrics
from oq2vl_jax.training.checkpoint import Checkpointer
from fixtures.convert import hf_llm, hf_vision, tiny_tokenizer_dir  # noqa: F401,F811 (pytest fixtures)
from fixtures.training import (CLI_STEPS, FAST_COMPILE, SyntheticIterator, cli, cli_env, losses, synthetic_factory,
                               tiny_config, wait_for_step)

class InterruptingIterator(SyntheticIterator):
    """Sends this process SIGTERM, or raises (a crash), when asked for batch `at` (counting from the stream start)."""

    def __init__(self, rows, at: int, how: str):
        super().__init__(rows)
        self.at, self.how = at, how

    def __next__(self):
        if self.index == self.at:
            if self.how == "crash":
                raise RuntimeError("simulated crash")
            os.kill(os.getpid(), signal.SIGTERM)
        return super().__next__()


def test_run_metrics_eval_checkpoints_and_exact_resume_after_sigterm_and_crash(tmp_path):
    reference_dir, workdir = str(tmp_path / "reference"), str(tmp_path / "interrupted")

    def run(directory, factory, **train):  # FSDP over 2 devices: sharded saves and restores, quicker compiles
        config = tiny_config(**train)
        config.mesh.update(data=1, fsdp=-1)
        return loop.run(config, directory, devices=jax.devices()[:2], data_factory=factory,
                        compiler_options=FAST_COMPILE)

    result = run(reference_dir, synthetic_factory())
    assert (result.start_step, result.last_step, result.stopped_by) == (0, 6, "num_steps")
    records = metrics.read_metrics(reference_dir)
    assert [r["step"] for r in records if "loss" in r] == [1, 2, 3, 4, 5, 6]
    assert "first_step_time" in records[0]
    logged = [r for r in records if "tokens_per_s" in r]
    assert [r["step"] for r in logged] == [2, 4, 6] and all(r["fill"] > 0.5 and r["data/documents"] > 0
                                                            for r in logged)
    assert [r["step"] for r in records if "eval_loss" in r] == [2, 4, 6]
    assert result.eval_loss == pytest.approx(records[-1]["eval_loss"])
    assert sorted(os.listdir(os.path.join(reference_dir, "checkpoints"))) == ["4", "6"]  # keep=2
    expected = {r["step"]: r["loss"] for r in records if "loss" in r}

    # SIGTERM while batch 2 is read: stops after the current step with a checkpoint there
    interrupt = lambda at, how: (lambda split, seed, pi, pc, rows: InterruptingIterator(rows, at, how))  # noqa: E731
    stopped = run(workdir, interrupt(2, "sigterm"), eval_every=0)
    assert stopped.stopped_by == "sigterm" and 1 <= stopped.last_step < 6
    ckpt = Checkpointer(os.path.join(workdir, "checkpoints"))
    assert ckpt.latest_step() == stopped.last_step
    ckpt.close()
    # resumed; crashes when batch 5 is read (batches already consumed are not re-read)
    with pytest.raises(RuntimeError, match="simulated crash"):
        run(workdir, interrupt(5, "crash"), eval_every=0)
    final = run(workdir, synthetic_factory(), eval_every=0)
    assert final.last_step == 6 and final.start_step in (4, 5)
    got = {r["step"]: r["loss"] for r in metrics.read_metrics(workdir) if "loss" in r}
    assert [r["step"] for r in metrics.read_metrics(workdir) if "loss" in r] == [1, 2, 3, 4, 5, 6]
    assert got == expected  # bit-exact
    # the data totals are saved with each process's iterator state and continue across restarts
    last = lambda d: [r for r in metrics.read_metrics(d) if "data/documents" in r][-1]  # noqa: E731
    assert last(workdir)["step"] == 6 and last(workdir)["data/documents"] == last(reference_dir)["data/documents"]

    # the finished reference run again: resumes at num_steps, runs and re-logs nothing
    again = run(reference_dir, synthetic_factory(), eval_every=0)
    assert (again.start_step, again.last_step) == (6, 6)
    assert [r["step"] for r in metrics.read_metrics(reference_dir) if "loss" in r] == [1, 2, 3, 4, 5, 6]


class LimitedIterator(SyntheticIterator):
    """A finite stream: `limit` batches."""

    def __init__(self, rows, limit: int):
        super().__init__(rows)
        self.limit = limit

    def __next__(self):
        if self.index >= self.limit:
            raise StopIteration
        return super().__next__()


def test_every_step_once_after_a_crash_before_the_first_checkpoint_and_totals_when_the_data_runs_out(tmp_path):
    workdir = str(tmp_path)
    config = tiny_config(num_steps=6, eval_every=0, global_batch_rows=4, micro_batches=1)
    config.mesh.update(data=1, fsdp=1)
    config.checkpoint.every_steps = 100  # no checkpoint before the crash

    def run(factory):
        return loop.run(config, workdir, devices=jax.devices()[:1], data_factory=factory,
                        compiler_options=FAST_COMPILE)

    with pytest.raises(RuntimeError, match="simulated crash"):
        run(lambda split, seed, pi, pc, rows: InterruptingIterator(rows, 4, "crash"))
    assert [r["step"] for r in metrics.read_metrics(workdir)][:2] == [1, 2]
    assert not os.path.exists(os.path.join(workdir, "checkpoints", "1"))
    assert not os.path.exists(os.path.join(workdir, "train.lock"))  # released however the run ended
    with open(os.path.join(workdir, metrics.METRICS_FILE), "a") as f:
        f.write('{"step": 4, "lo')  # and a crash in the middle of writing a record

    result = run(lambda split, seed, pi, pc, rows: LimitedIterator(rows, 5))
    assert (result.start_step, result.last_step, result.stopped_by) == (0, 5, "data_exhausted")
    records = metrics.read_metrics(workdir)
    assert [r["step"] for r in records] == [1, 2, 3, 4, 5]
    assert records[-1]["data/documents"] > 0 and "tokens_per_s" in records[-1]  # the final totals, off a log step
    ckpt = Checkpointer(os.path.join(workdir, "checkpoints"))
    assert ckpt.all_steps() == [5]
    ckpt.close()


class NanIterator(SyntheticIterator):
    def __next__(self):
        batch = super().__next__()
        batch["loss_weights"] = np.where(batch["loss_weights"] > 0, np.float32(np.nan), np.float32(0))
        return batch


def test_consecutive_non_finite_steps_stop_the_run(tmp_path):
    factory = lambda split, seed, pi, pc, rows: NanIterator(rows)  # noqa: E731
    config = tiny_config(num_steps=10, max_nonfinite_in_row=3, eval_every=0, global_batch_rows=4, micro_batches=1)
    config.mesh.update(data=1, fsdp=1)
    config.checkpoint.every_steps = 100
    with pytest.raises(UserError, match="3 consecutive steps"):
        loop.run(config, str(tmp_path), devices=jax.devices()[:1], data_factory=factory,
                 compiler_options=FAST_COMPILE)
    records = metrics.read_metrics(str(tmp_path))
    assert [r["skipped_nonfinite"] for r in records] == [1, 1, 1]


@pytest.mark.parametrize("override, field", [
    (dict(global_batch_rows=12), "global_batch_rows"),      # 12 rows over 8 batch shards
    (dict(micro_batches=3), "micro_batches"),
    (dict(stage="everything"), "train.stage"),
])
def test_config_errors_name_the_field(tmp_path, override, field):
    with pytest.raises(UserError, match=field):
        loop.run(tiny_config(**override), str(tmp_path), data_factory=synthetic_factory())


def test_missing_weight_path_names_the_field(tmp_path):
    config = tiny_config()
    config.init.update(source="pretrained", llm_dir=str(tmp_path / "nope"))
    with pytest.raises(UserError, match="init.llm_dir"):
        loop.run(config, str(tmp_path), data_factory=synthetic_factory())


# ------------------------------------------------------------------------------------------------------------------
# The CLI on the demo data, in subprocesses: SIGTERM, kill -9, resume.

@pytest.mark.slow  # ~2 minutes on 2 cores: five CLI start-ups; the in-process test above covers the same logic
def test_cli_sigterm_then_kill9_resume_exactly(tmp_path):
    data_dir = str(tmp_path / "demo_data")
    reference_dir, interrupted_dir = str(tmp_path / "reference"), str(tmp_path / "interrupted")
    # write the demo data once so the two first runs do not race for it
    prepare = subprocess.run(cli(str(tmp_path / "prepare"), data_dir) + ["--config.train.num_steps=1"],
                             env=cli_env(), capture_output=True, text=True, timeout=300)
    assert prepare.returncode == 0, prepare.stderr[-3000:]
    reference = subprocess.Popen(cli(reference_dir, data_dir), env=cli_env(), stdout=subprocess.PIPE,
                                 stderr=subprocess.PIPE, text=True)
    first = subprocess.Popen(cli(interrupted_dir, data_dir), env=cli_env(), stdout=subprocess.PIPE,
                             stderr=subprocess.PIPE, text=True)
    wait_for_step(first, interrupted_dir, 4)
    first.send_signal(signal.SIGTERM)
    out, err = first.communicate(timeout=120)
    assert first.returncode == 0, err[-3000:]
    stopped_at = max(losses(interrupted_dir))
    assert f"checkpoint: {interrupted_dir}/checkpoints/{stopped_at}" in out and "(sigterm)" in out
    assert stopped_at < CLI_STEPS

    second = subprocess.Popen(cli(interrupted_dir, data_dir), env=cli_env(), stdout=subprocess.PIPE,
                              stderr=subprocess.PIPE, text=True)
    wait_for_step(second, interrupted_dir, stopped_at + 4)
    second.send_signal(signal.SIGKILL)
    second.wait(timeout=60)
    third = subprocess.run(cli(interrupted_dir, data_dir), env=cli_env(), capture_output=True, text=True, timeout=300)
    assert third.returncode == 0, third.stderr[-3000:]
    assert f"-> {CLI_STEPS} (num_steps)" in third.stdout

    out, err = reference.communicate(timeout=300)
    assert reference.returncode == 0, err[-3000:]
    expected, got = losses(reference_dir), losses(interrupted_dir)
    assert sorted(got) == list(range(1, CLI_STEPS + 1)) == sorted(expected)
    assert got == expected  # bit-exact: same batches, same compiled step
    assert got[CLI_STEPS] < got[1]


def test_init_from_pretrained_hf_dirs_then_from_that_checkpoint(tmp_path, hf_llm, hf_vision):  # noqa: F811
    import jax.numpy as jnp

    from oq2vl_jax import checkpoint_io
    from oq2vl_jax.pretrained.importer import import_pretrained

    config = tiny_config(num_steps=1, eval_every=0, global_batch_rows=4, micro_batches=1)
    config.mesh.update(data=1, fsdp=1)
    config.init.update(source="pretrained", llm_dir=hf_llm[0], vision_src=hf_vision[0])
    first = str(tmp_path / "first")
    result = loop.run(config, first, devices=jax.devices()[:1], data_factory=synthetic_factory(),
                      compiler_options=FAST_COMPILE)
    model_config, imported = import_pretrained(hf_llm[0], hf_vision[0], tokens_per_image=4)
    assert result.model_config == model_config and model_config.llm.intermediate_size == 96
    # the frozen tower is the imported one, stored in bf16; the tokenizer came from the LLM directory
    jax.tree.map(lambda a, b: np.testing.assert_array_equal(np.asarray(a), np.asarray(b).astype(jnp.bfloat16)),
                 jax.device_get(result.state.frozen["vision"]), imported["vision"])
    assert checkpoint_io.tokenizer_path(result.checkpoint_dir)

    # a new run starting from that checkpoint, in another stage: only its parameters are read
    config.init.update(source="checkpoint", init_from=result.checkpoint_dir, llm_dir="", vision_src="")
    config.train.stage = "align"
    second = loop.run(config, str(tmp_path / "second"), devices=jax.devices()[:1], data_factory=synthetic_factory(),
                      compiler_options=FAST_COMPILE)
    assert second.start_step == 0 and second.last_step == 1
    trained_llm = jax.device_get(result.state.trainable["llm"])
    jax.tree.map(lambda a, b: np.testing.assert_array_equal(np.asarray(a), np.asarray(b).astype(jnp.bfloat16)),
                 jax.device_get(second.state.frozen["llm"]), trained_llm)
