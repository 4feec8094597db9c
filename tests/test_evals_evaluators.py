"""config.evals specs and the benchmark evaluator on a scripted model."""

import pytest

from eval_fixtures import write_demo
from oq2vl_jax.errors import UserError
from oq2vl_jax.evals import evaluators


def test_parse_specs():
    a, b = evaluators.parse_specs(("demo:limit=32,every=100,prompt=chat", "demo_attributes"))
    assert (a.name, a.limit, a.every, a.prompt, a.batch) == ("demo", 32, 100, "chat", 8)
    assert b.name == "demo_attributes" and b.every is None and b.limit == evaluators.DEFAULT_LIMIT
    assert a.due(200, 50, 1000) and not a.due(150, 50, 1000) and a.due(1000, 50, 1000)
    assert b.due(150, 50, 1000) and not b.due(150, 0, 1000) and b.due(1000, 0, 1000)
    for bad, words in [("nosuch", "unknown evaluator"), ("demo:limit", "KEY=VALUE"), ("demo:every=x", "integer"),
                       ("demo:prompt=odd", "reference or chat"), ("demo:colour=red", "KEY=VALUE")]:
        with pytest.raises(UserError, match=words):
            evaluators.parse_specs((bad,))


class Scripted:
    def generate(self, requests):
        return ["red" if "colour" in r.prompt else "no idea" for r in requests]

    def score(self, requests):
        raise AssertionError("the demo task asks for no probabilities")


def test_run_benchmark_metrics_and_files(tmp_path):
    # 3 items: "red" for the colour question is right; "no idea" is wrong for "a circle", and for "No" strict says
    # wrong while the lenient reference finds "no" in "no idea"
    write_demo(str(tmp_path / "data"))
    spec = evaluators.parse_spec("demo:limit=0")
    m = evaluators.run_benchmark(spec, Scripted(), str(tmp_path / "data"), str(tmp_path / "out"))
    assert m == pytest.approx({"eval/demo/strict": 100 / 3, "eval/demo/reference": 200 / 3})
    assert (tmp_path / "out" / "summary.json").exists() and (tmp_path / "out" / "report.md").exists()
