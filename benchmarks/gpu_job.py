"""The one-GPU benchmark job in stages, most decisive first, inside a time budget (run by benchmarks/gpu_run.sh).

  bash benchmarks/gpu_run.sh                   # on the GPU machine (installs the carried wheels, then runs this)
  TINY=1 OUT=/tmp/job bash benchmarks/gpu_run.sh   # every stage at tiny sizes on CPU: checks the job, not the speed

A device call is lent for minutes, so the job is built to end inside it with the numbers that matter most already
written, whatever happens later:
- Budget: JOB_BUDGET_S seconds (default 540) from JOB_START (epoch seconds, set by gpu_run.sh before the wheels
  are installed). Before each stage the job looks at the time left (less RESERVE_S for the summary): a stage starts
  only if its expected duration on one H100 fits (`estimate_s`: a guess until a device has run it, from the full
  step's compile time for the H100 target on a CPU host, ~10-20 s, plus start-up, weights and the timed steps; the
  first run's stages.jsonl gives the real ones), and runs under a timeout of what is left; one that overruns is
  killed with its whole process group.
- Order: our best step, then the PyTorch peer with checkpointing on the same rows (the decisive pair), then the
  numbers that explain or extend it (the safe attention variant, the attention kernels, the peer without
  checkpointing, another variant), then decode, the evaluation runner, curation, the cuDNN unit tests.
- Each stage writes into $OUT as it ends: logs/NAME.log (its output), its JSON, one line in stages.jsonl
  (status ok / failed / timeout / skipped, seconds, the files it wrote); table.md is rewritten after every step
  stage, so the comparison exists from the second stage on.
Our variants are "name:overrides" in VARIANTS, separated by ";"; the first is "our best step".
"""

from __future__ import annotations

import dataclasses
import json
import os
import signal
import subprocess
import sys
import time

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
DEFAULT_BUDGET_S = 540.0  # 9 minutes: a 10-minute device command with room for the machine's own overhead
RESERVE_S = 15.0  # kept back for the summary after the last stage
DEFAULT_VARIANTS = ("best:--config.model.remat=save_attention --config.model.attention=cudnn_packed;"
                    "full_cudnn:--config.model.remat=full --config.model.attention=cudnn;"
                    "full_packed:--config.model.remat=full --config.model.attention=cudnn_packed")
TINY_VARIANTS = "tiny_none:--config.model.remat=none;tiny_full:--config.model.remat=full"


@dataclasses.dataclass(frozen=True)
class Stage:
    name: str
    argv: tuple[str, ...]
    estimate_s: float  # expected wall time on one H100 (start-up and compilation included): decides whether it starts
    cap_s: float  # the most it may run even with time left
    outputs: tuple[str, ...] = ()  # files under OUT it writes
    env: tuple[tuple[str, str], ...] = ()  # extra environment
    step: bool = False  # a step result (ours_* / peer_*): the table is rewritten after it


def variants(spec: str) -> list[tuple[str, list[str]]]:
    out = []
    for item in filter(None, (s.strip() for s in spec.split(";"))):
        name, _, overrides = item.partition(":")
        out.append((name.strip(), overrides.split()))
    return out


def plan(out: str, *, tiny: bool, variant_spec: str | None = None, rows: int = 2, steps: int = 5,
         warmup: int = 2) -> list[Stage]:
    """The stages in the order they run."""
    py = sys.executable
    runs = variants(variant_spec or (TINY_VARIANTS if tiny else DEFAULT_VARIANTS))
    config, tiny_flag = ("configs/demo.py", ["--tiny"]) if tiny else ("configs/h100x8.py", [])
    common = ["--rows", str(rows), "--steps", str(steps), "--warmup", str(warmup)]

    def ours(name, overrides):
        json_path = os.path.join(out, f"ours_{name}.json")
        return Stage(f"ours_{name}", (py, "-m", "oq2vl_jax.bench", "step", "--config", config, *common, *tiny_flag,
                                      *overrides, "--json", json_path), 150, 300, (json_path,), step=True)

    def peer(name, extra):
        json_path = os.path.join(out, f"peer_{name}.json")
        return Stage(f"peer_{name}", (py, "benchmarks/torch_peer.py", *common, *extra, *tiny_flag, "--json",
                                      json_path), 75, 240, (json_path,), step=True)

    attention = os.path.join(out, "attention.jsonl")
    decode = os.path.join(out, "decode.json")
    evals = os.path.join(out, "evals_throughput.jsonl")
    curate = os.path.join(out, "curate.json")
    decode_flags = (["--decode_size", "small", "--batches", "1,8", "--new_tokens", "8", "--repeats", "2"] if tiny
                    else ["--decode_size", "full", "--batches", "1,8,64", "--new_tokens", "32", "--repeats", "3"])
    eval_flags = (["--size", "tiny", "--items", "32", "--batch", "8"] if tiny
                  else ["--size", "full", "--items", "256", "--batch", "32"])
    curate_flags = ["--images", "64", "--rows", "10000"] if tiny else ["--so400m", "--batch", "256"]
    stages = [ours(*runs[0]), peer("ckpt", [])]
    stages += [ours(*r) for r in runs[1:2]]
    stages += [Stage("attention", (py, "benchmarks/gpu_check.py", *tiny_flag, "--json", attention), 60, 150,
                     (attention,)),
               peer("nockpt", ["--no-grad-ckpt"])]
    stages += [ours(*r) for r in runs[2:]]
    stages += [
        # both sides share the GPU in one process: JAX must not take 92% of it up front
        Stage("decode", (py, "-m", "oq2vl_jax.bench", "decode", *decode_flags, "--json", decode), 240, 420,
              (decode,), env=(("XLA_PYTHON_CLIENT_MEM_FRACTION", "0.5"),)),
        Stage("evals", (py, "benchmarks/bench_evals.py", *eval_flags, "--json", evals), 150, 300, (evals,)),
        Stage("curate", (py, "benchmarks/bench_curate.py", *curate_flags, "--json", curate), 90, 240, (curate,)),
        Stage("unit_attention", (py, "-m", "pytest", "-q", "-p", "no:cacheprovider",
                                 "tests/models/test_attention.py"), 60, 120),
    ]
    return stages


# ------------------------------------------------------------------------------------------------ running
def _record(out: str, entry: dict) -> None:
    with open(os.path.join(out, "stages.jsonl"), "a") as f:
        f.write(json.dumps(entry) + "\n")
        f.flush()
        os.fsync(f.fileno())


def _kill_group(proc: subprocess.Popen) -> None:
    """SIGTERM to the stage's process group (its own children included), SIGKILL if it has not ended in 10 s."""
    for sig, wait in ((signal.SIGTERM, 10), (signal.SIGKILL, 10)):
        try:
            os.killpg(proc.pid, sig)
        except ProcessLookupError:
            return
        try:
            proc.wait(timeout=wait)
            return
        except subprocess.TimeoutExpired:
            continue


def _tail(path: str, lines: int = 12) -> str:
    noise = ("I1", "W1", "WARNING", "INFO", "Loading weights")
    with open(path, errors="replace") as f:
        kept = [line.rstrip() for line in f if line.strip() and not line.startswith(noise)]
    return "\n".join(kept[-lines:])


class Stopped(Exception):
    """The job itself was told to stop (SIGTERM, SIGINT: the device call's own time limit)."""


def _stop(signum, frame):
    raise Stopped(signal.Signals(signum).name)


def run_stage(stage: Stage, out: str, timeout_s: float) -> dict:
    log_path = os.path.join(out, "logs", f"{stage.name}.log")
    os.makedirs(os.path.dirname(log_path), exist_ok=True)
    env = {**os.environ, **dict(stage.env)}
    start = time.time()
    with open(log_path, "w") as log:
        proc = subprocess.Popen(stage.argv, cwd=REPO, stdout=log, stderr=subprocess.STDOUT, env=env,
                                start_new_session=True)  # its own process group, so a kill takes its children too
        try:
            rc = proc.wait(timeout=timeout_s)
            status = "ok" if rc == 0 else "failed"
        except subprocess.TimeoutExpired:
            _kill_group(proc)
            rc, status = None, "timeout"
        except BaseException:  # the job is stopping: the stage (in its own session) must not outlive it
            _kill_group(proc)
            raise
    return {"stage": stage.name, "status": status, "rc": rc, "seconds": round(time.time() - start, 1),
            "timeout_s": round(timeout_s, 1),
            "outputs": [os.path.relpath(p, out) for p in stage.outputs if os.path.exists(p)],
            "log": os.path.relpath(log_path, out)}


def write_table(out: str) -> None:
    sys.path.insert(0, os.path.join(REPO, "benchmarks"))
    import summarize

    text = summarize.table(summarize.rows(out))
    tmp = os.path.join(out, "table.md.tmp")
    with open(tmp, "w") as f:
        f.write(text + "\n")
    os.replace(tmp, os.path.join(out, "table.md"))


def run_job(stages: list[Stage], out: str, *, budget_s: float, start: float, reserve_s: float = RESERVE_S,
            after_step=write_table, echo=print) -> list[dict]:
    """Runs the stages in order within `budget_s` of `start` (epoch seconds); returns their records."""
    os.makedirs(out, exist_ok=True)
    records = []
    previous = {sig: signal.signal(sig, _stop) for sig in (signal.SIGTERM, signal.SIGINT)}
    try:
        for stage in stages:
            records.append(_run_or_skip(stage, out, budget_s, start, reserve_s, after_step, echo))
    except Stopped as e:
        _record(out, {"stage": "job", "status": "stopped", "why": str(e)})
        echo(f"== job stopped by {e}")
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)
    return records


def _run_or_skip(stage: Stage, out: str, budget_s: float, start: float, reserve_s: float, after_step, echo) -> dict:
    left = budget_s - (time.time() - start) - reserve_s
    if left < stage.estimate_s:
        record = {"stage": stage.name, "status": "skipped", "seconds": 0.0,
                  "why": f"{left:.0f} s left, needs ~{stage.estimate_s:.0f} s"}
        echo(f"== {stage.name}: skipped ({record['why']})")
    else:
        echo(f"== {stage.name} (at most {min(stage.cap_s, left):.0f} s): {' '.join(stage.argv[1:])}")
        record = run_stage(stage, out, min(stage.cap_s, left))
        echo(_tail(os.path.join(out, record["log"])))
        echo(f"-- {stage.name}: {record['status']} in {record['seconds']} s")
        if stage.step and after_step is not None:
            after_step(out)
    _record(out, record)
    return record


def versions() -> str:
    """The versions that matter, from the installed metadata (importing jax and torch would cost seconds)."""
    from importlib import metadata

    found = [f"python {sys.version.split()[0]}"]
    for dist in ("jax", "jaxlib", "flax", "optax", "orbax-checkpoint", "torch", "transformers"):
        try:
            found.append(f"{dist} {metadata.version(dist)}")
        except metadata.PackageNotFoundError:
            found.append(f"{dist} missing")
    return ", ".join(found)


def write_env(out: str, tiny: bool) -> None:
    """device.txt (card, driver, versions, date) and pip_list.txt (what the machine has without the carried
    packages: what fetch_gpu_wheels.sh must bring)."""
    lines = []
    if tiny:
        lines.append("cpu (TINY=1)")
    else:
        try:
            lines.append(subprocess.run(["nvidia-smi", "--query-gpu=name,memory.total,driver_version",
                                         "--format=csv,noheader"], capture_output=True, text=True,
                                        timeout=30).stdout.strip())
        except (OSError, subprocess.TimeoutExpired) as e:
            lines.append(f"nvidia-smi: {e}")
    lines += [versions(), time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime())]
    with open(os.path.join(out, "device.txt"), "w") as f:
        f.write("\n".join(lines) + "\n")
    print("\n".join(lines))
    native = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}  # without the carried packages
    pip = subprocess.run([sys.executable, "-m", "pip", "list", "--format=freeze"], capture_output=True, text=True,
                         timeout=60, env=native)
    with open(os.path.join(out, "pip_list.txt"), "w") as f:
        f.write(pip.stdout)


def main() -> int:
    out = os.path.abspath(os.environ.get("OUT") or os.path.join(REPO, "gpu_results"))
    os.makedirs(out, exist_ok=True)
    tiny = os.environ.get("TINY", "0") == "1"
    start = float(os.environ.get("JOB_START") or time.time())
    budget = float(os.environ.get("JOB_BUDGET_S") or DEFAULT_BUDGET_S)
    write_env(out, tiny)
    stages = plan(out, tiny=tiny, variant_spec=os.environ.get("VARIANTS"), rows=int(os.environ.get("ROWS", 2)),
                  steps=int(os.environ.get("STEPS", 5)), warmup=int(os.environ.get("WARMUP", 2)))
    only = os.environ.get("STAGES")  # e.g. STAGES=ours_best,peer_ckpt
    if only:
        stages = [s for s in stages if s.name in only.split(",")]
    records = run_job(stages, out, budget_s=budget, start=start)
    write_table(out)
    print(open(os.path.join(out, "table.md")).read())
    if os.path.exists(os.path.join(out, "decode.json")):
        sys.path.insert(0, REPO)
        from oq2vl_jax.bench import decode as bench_decode

        with open(os.path.join(out, "decode.json")) as f:
            print(bench_decode.format_table(json.load(f)))
    done = sum(r["status"] == "ok" for r in records)
    print(f"job: {done}/{len(records)} stages ok in {time.time() - start:.0f} s of {budget:.0f} "
          f"({', '.join(r['stage'] + '=' + r['status'] for r in records)})")
    return 0 if records and records[0]["status"] == "ok" else 1


if __name__ == "__main__":
    sys.exit(main())
