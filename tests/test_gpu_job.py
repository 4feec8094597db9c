"""The GPU job's plan and time budget (benchmarks/gpu_job.py), with stand-in stages; the real stages at tiny sizes on
CPU in the slow test."""

import importlib.util
import json
import os
import subprocess
import sys
import time

import pytest

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _load(name):
    spec = importlib.util.spec_from_file_location(name, os.path.join(REPO, "benchmarks", f"{name}.py"))
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module  # dataclasses look their module up there
    spec.loader.exec_module(module)
    return module


job = _load("gpu_job")


def _stage(name, code, estimate_s=0.1, cap_s=30.0, step=False, outputs=()):
    return job.Stage(name, (sys.executable, "-c", code), estimate_s, cap_s, tuple(outputs), step=step)


def _records(out):
    with open(os.path.join(out, "stages.jsonl")) as f:
        return [json.loads(line) for line in f]


def test_the_decisive_pair_runs_first_and_fits_the_budget_on_its_own(tmp_path):
    stages = job.plan(str(tmp_path), tiny=False)
    names = [s.name for s in stages]
    assert names[:2] == ["ours_best", "peer_ckpt"]  # our best step, then the peer with checkpointing, same rows
    last_step = max(i for i, s in enumerate(stages) if s.step)
    assert all(names.index(n) > last_step for n in ("decode", "evals", "curate"))
    assert stages[0].estimate_s + stages[1].estimate_s + job.RESERVE_S < job.DEFAULT_BUDGET_S / 2
    ours, peer = stages[0].argv, stages[1].argv
    assert ours[ours.index("--rows") + 1] == peer[peer.index("--rows") + 1]  # the same rows on both sides
    assert "--no-grad-ckpt" not in peer
    for stage in stages:  # every script a stage runs exists, and its results land in OUT
        scripts = [a for a in stage.argv if a.endswith(".py")]
        assert all(os.path.exists(os.path.join(REPO, a)) for a in scripts), stage
        assert all(os.path.dirname(p) == str(tmp_path) for p in stage.outputs), stage
    assert [s.name for s in job.plan(str(tmp_path), tiny=True)][:2] == ["ours_tiny_none", "peer_ckpt"]


def test_variants_parse_name_and_overrides():
    assert job.variants("a:--x=1 --y=2; b:") == [("a", ["--x=1", "--y=2"]), ("b", [])]


def test_stages_run_in_order_within_the_budget_and_record_as_they_end(tmp_path):
    out = str(tmp_path)
    pid_file = tmp_path / "grandchild.pid"
    hang = (f"import subprocess, sys, time; p = subprocess.Popen([sys.executable, '-c', 'import time; "
            f"time.sleep(600)']); open({str(pid_file)!r}, 'w').write(str(p.pid)); time.sleep(600)")
    seen = []
    stages = [_stage("quick", "print('hello')"),
              _stage("broken", "import sys; sys.exit(3)"),
              _stage("hangs", hang),
              _stage("late", "print('never')", estimate_s=1.0)]
    start = time.time()
    records = job.run_job(stages, out, budget_s=6.0, start=start, reserve_s=0.0, after_step=None,
                          echo=lambda line: seen.append((line, len(_records(out)) if os.path.exists(
                              os.path.join(out, "stages.jsonl")) else 0)))
    assert time.time() - start < 6.0 + 25  # the hanging stage was stopped at the budget (+ the kill's grace)
    assert [r["status"] for r in records] == ["ok", "failed", "timeout", "skipped"]
    assert records[1]["rc"] == 3 and records[2]["timeout_s"] <= 6.0
    assert "needs ~1 s" in records[3]["why"]
    assert _records(out) == records  # one line per stage, in order
    assert "hello" in open(os.path.join(out, records[0]["log"])).read()
    announced = [count for line, count in seen if line.startswith("== broken")]
    assert announced == [1]  # the first stage's line was written before the second began
    grandchild = int(pid_file.read_text())
    for _ in range(50):  # the whole process group went, not only the stage's own process
        if not os.path.exists(f"/proc/{grandchild}") or open(f"/proc/{grandchild}/stat").read().split()[2] == "Z":
            break
        time.sleep(0.1)
    else:
        pytest.fail(f"the stage's child {grandchild} is still running")


def test_the_step_table_is_rewritten_after_each_step_stage(tmp_path):
    out = str(tmp_path)
    result = {"impl": "torch-peer", "device": "cpu", "rows": 2, "step_ms": 500.0, "tokens_per_s": 16000.0,
              "images_per_s": 100.0, "mfu": 0.25, "peak_mem_gib": 30.0}
    path = os.path.join(out, "peer_ckpt.json")
    write = f"import json; json.dump({result!r}, open({path!r}, 'w'))"
    tables = []
    job.run_job([_stage("peer_ckpt", write, step=True, outputs=[path]), _stage("after", "pass")], out,
                budget_s=60.0, start=time.time(), after_step=lambda o: (job.write_table(o), tables.append(
                    open(os.path.join(o, "table.md")).read())), echo=lambda line: None)
    assert len(tables) == 1 and "| peer_ckpt | cpu | 2 | 500.0 | 16,000 |" in tables[0]
    assert _records(out)[0]["outputs"] == ["peer_ckpt.json"]
    with open(os.path.join(out, "decode.json"), "w") as f:  # another stage's JSON is not a step row
        json.dump({"size": "small", "rows": []}, f)
    job.write_table(out)
    assert open(os.path.join(out, "table.md")).read().count("| peer_ckpt |") == 1


@pytest.mark.slow
def test_the_whole_job_runs_at_tiny_sizes_on_cpu(tmp_path):
    out = tmp_path / "out"
    env = {k: v for k, v in os.environ.items() if k != "XLA_FLAGS"}  # as a user runs it: one CPU device, optimized
    env.update(TINY="1", OUT=str(out), JOB_BUDGET_S="1500", STEPS="1", WARMUP="1")
    proc = subprocess.run(["bash", os.path.join(REPO, "benchmarks", "gpu_run.sh")], env=env, capture_output=True,
                          text=True, timeout=1800)
    records = _records(str(out))
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    assert [r["status"] for r in records] == ["ok"] * len(records), records
    assert [r["stage"] for r in records] == [s.name for s in job.plan(str(out), tiny=True)]
    for name in ("ours_tiny_none.json", "peer_ckpt.json", "decode.json", "attention.jsonl", "table.md",
                 "device.txt", "pip_list.txt"):
        assert (out / name).exists(), name
    decode = json.loads((out / "decode.json").read_text())
    assert [r["batch"] for r in decode["rows"]] == [1, 8] and all(r["same_tokens"] for r in decode["rows"])
