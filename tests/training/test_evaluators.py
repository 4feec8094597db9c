"""config.evals specs and the benchmark evaluator on a scripted model."""

import os

import pytest

from fixtures.evals import write_demo
from fixtures.paths import REPO
from oq2vl_jax.errors import UserError
from oq2vl_jax.evals import specs
from oq2vl_jax.training import evaluators


def test_parse_specs():
    a, b = specs.parse_specs(("demo:limit=32,every=100,prompt=chat", "demo_attributes"))
    assert (a.name, a.limit, a.every, a.prompt, a.batch) == ("demo", 32, 100, "chat", 8)
    assert b.name == "demo_attributes" and b.every is None and b.limit == specs.DEFAULT_LIMIT
    assert a.due(200, 50, 1000) and not a.due(150, 50, 1000) and a.due(1000, 50, 1000)
    assert b.due(150, 50, 1000) and not b.due(150, 0, 1000) and b.due(1000, 0, 1000)
    for bad, words in [("nosuch", "unknown evaluator"), ("demo:limit", "KEY=VALUE"), ("demo:every=x", "integer"),
                       ("demo:prompt=odd", "reference or chat"), ("demo:colour=red", "KEY=VALUE")]:
        with pytest.raises(UserError, match=words):
            specs.parse_specs((bad,))


class Scripted:
    def generate(self, requests):
        return ["red" if "colour" in r.prompt else "no idea" for r in requests]

    def score(self, requests):
        raise AssertionError("the demo task asks for no probabilities")


def test_run_benchmark_metrics_and_files(tmp_path):
    # 3 items: "red" for the colour question is right; "no idea" is wrong for "a circle", and for "No" strict says
    # wrong while the lenient reference finds "no" in "no idea"
    write_demo(str(tmp_path / "data"))
    spec = specs.parse_spec("demo:limit=0")
    m = evaluators.run_benchmark(spec, Scripted(), str(tmp_path / "data"), str(tmp_path / "out"))
    assert m == pytest.approx({"eval/demo/strict": 100 / 3, "eval/demo/reference": 200 / 3})
    assert (tmp_path / "out" / "summary.json").exists() and (tmp_path / "out" / "report.md").exists()


@pytest.mark.slow
def test_training_loop_runs_config_evals(tmp_path):
    """config.evals in a real (tiny) training run: the demo VQA task every 2 steps, its scores in metrics.jsonl and
    its predictions / summary / report under WORKDIR/evals/step_N."""
    import json

    import jax

    from oq2vl_jax.demo.shapes import build_tiny_tokenizer
    from oq2vl_jax.training import loop
    from fixtures.training import tiny_config
    from fixtures.training import synthetic_factory

    workdir = str(tmp_path / "run")
    write_demo(os.path.join(workdir, "demo_data"))
    config = tiny_config(num_steps=4, eval_every=0)
    config.model.vocab_size = 1024
    config.data.tokenizer_dir = build_tiny_tokenizer(str(tmp_path / "tok"))
    config.evals = ("demo:limit=3,every=2",)
    config.mesh.update(data=1, fsdp=-1)
    loop.run(config, workdir, devices=jax.devices()[:1], data_factory=synthetic_factory())
    records = [json.loads(line) for line in open(os.path.join(workdir, "metrics.jsonl"))]
    evals = [r for r in records if "eval/demo/strict" in r]
    assert [r["step"] for r in evals] == [2, 4]
    for r in evals:
        summary = json.load(open(os.path.join(workdir, "evals", f"step_{r['step']}", "summary.json")))
        assert summary["tasks"]["demo"]["strict"]["score"] == r["eval/demo/strict"]
        assert summary["tasks"]["demo"]["scored"] == 3


def test_config_evals_override_through_the_flag_parser():
    from absl import flags
    from ml_collections import config_flags

    repo = REPO
    argv = ["prog", f"--config={os.path.join(repo, 'configs', 'demo.py')}",
            "--config.evals=('demo:limit=8,every=50', 'demo_attributes')"]
    fv = flags.FlagValues()
    config_flags.DEFINE_config_file("config", flag_values=fv, sys_argv=argv)  # overrides are found in argv
    fv(argv)
    assert fv.config.evals == ("demo:limit=8,every=50", "demo_attributes")
    assert [s.name for s in specs.parse_specs(fv.config.evals)] == ["demo", "demo_attributes"]


def test_demo_sft_config_evaluates_its_own_held_out_set(tmp_path):
    """configs/demo_sft.py runs the demo VQA task (chat prompts, every item) on WORKDIR/sft_data, not the
    pre-training demo's directory."""
    import runpy

    repo = REPO
    config = runpy.run_path(os.path.join(repo, "configs", "demo_sft.py"))["get_config"]()
    (spec,) = specs.parse_specs(config.evals)
    assert (spec.name, spec.prompt, spec.limit) == ("demo", "chat", 0)
    tok = tmp_path / "tok"
    tok.mkdir()
    ev = evaluators.TrainingEvaluators.from_config(config, str(tmp_path / "run"), None, str(tok))
    assert ev.demo_data_dir == str(tmp_path / "run" / "sft_data")


def test_demo_attributes_run_only_when_the_run_trains_on_the_demo_data(tmp_path):
    """configs/demo.py with the user's own data.sources: the demo's attribute score (of the synthetic set, which that
    run never sees) is skipped at start-up, not raised as an error after training."""
    import json
    import runpy

    from oq2vl_jax.demo import setup as demo_setup

    config = runpy.run_path(os.path.join(REPO, "configs", "demo.py"))["get_config"]()
    demo_dir, tok = tmp_path / "demo_data", tmp_path / "tok"
    demo_dir.mkdir()
    tok.mkdir()
    parts = {k: k for k in demo_setup.DEMO_KEYS}
    (demo_dir / demo_setup.DEMO_PATHS_FILE).write_text(json.dumps(parts))
    config.demo.data_dir = str(demo_dir)

    def built():
        return evaluators.TrainingEvaluators.from_config(config, str(tmp_path), None, str(tok))

    config.data.sources = ({"kind": "webdataset", "path": str(demo_dir / "train")},)  # what demo/setup.py sets
    assert [s.name for s in built().specs] == [specs.ATTRIBUTES]
    config.data.sources = ({"kind": "webdataset", "path": "/data/my_shards"},)
    assert built() is None
