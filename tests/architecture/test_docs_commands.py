"""Every command shown in README.md and docs/*.md is checked, so the documentation cannot rot.

The commands are the lines of the ```bash (or plain ```) blocks that start with `python`, `python3`, `bash`,
`launch/` or `sbatch` (continuation lines joined, `# comments` dropped). COMMANDS maps each to how it is checked:

- Run: the shown command through its real entry point, for real on tiny data: shown paths replaced by fixtures
  (`subs`), optional `[...]` parts and `...` dropped, `extra` arguments appended (a few steps, `--dry_run`).
- Help: the program's `--help` through its real entry point (where the real run needs GPUs, weights or minutes);
  every `--option` the shown command uses must appear in it.
- ByTest: run end to end by another test, named here; that test must exist.
- ShellSyntax: a GPU-only shell job: `bash -n` (its tiny CPU mode compiles full jobs; it runs on the GPU machine).

A shown command without an entry fails `test_every_shown_command_is_checked`: add one when you add a command.
argparse programs run in one Python process (runpy, `__main__`, one after another); absl programs (the trainer,
the step benchmark) each in their own.
"""

from __future__ import annotations

import glob
import json
import os
import re
import shlex
import subprocess
import sys
from typing import NamedTuple

import pytest

from fixtures.paths import REPO
from fixtures.data import write_numbered_shards

PREFIXES = ("python ", "python3 ", "bash ", "launch/", "sbatch ")
SHELL_BLOCKS = ("bash", "sh", "shell", "console", "")


class Run(NamedTuple):
    subs: dict = {}
    extra: tuple = ()
    expect: str = ""


class Help(NamedTuple):
    program: tuple  # argv after the interpreter, up to and including the subcommand


class ByTest(NamedTuple):
    node: str  # tests/<file>.py::<test name>


class ShellSyntax(NamedTuple):
    reason: str


DEMO_FAST = ("--config.train.num_steps=2", "--config.train.global_batch_rows=4", "--config.train.log_every=1",
             "--config.train.eval_every=0", "--config.checkpoint.every_steps=2", "--config.demo.num_train=32",
             "--config.demo.num_eval=4", "--config.data.row_length=64", "--config.data.pack_buffer=32",
             "--config.log.tensorboard=False")
DEMO = Run({"runs/demo": "{tmp}/demo"}, DEMO_FAST, "held-out attributes, with images")
INSTALL = ByTest("tests/architecture/test_install.py::test_pyproject_and_requirements_agree_and_torch_is_optional")
CONVERT_ROUND_TRIP = ByTest("tests/convert/test_cli.py::test_cli_round_trips")
CONVERT_EXPORT_HELP = Help(("-m", "oq2vl_jax.convert", "export"))
TRAIN_DRY = Run(extra=("--dry_run",), expect="per-device memory")
TRAIN_HELP = Help(("-m", "oq2vl_jax.train"))  # compiling for a TPU / GPU target needs .[plan-tpu] / .[plan-gpu]
BUCKET_RUN = ByTest("tests/training/test_buckets_e2e.py::test_demo_in_a_bucket_through_the_documented_entry_points")
CURATE_AS_DOCUMENTED = ByTest("tests/curate/test_reshard.py::test_cli_keys_select_reshard_as_documented")
LLAVA_UNIFIED = ByTest("tests/convert/test_llava_unified.py::test_curate_mlm_scores_with_the_imported_filter")

COMMANDS = {
    # docs/performance.md: the demo compiles for 8 simulated CPU devices; TPU / GPU targets need an optional package
    "python -m oq2vl_jax.train --config configs/demo.py --dry_run --dry_run_compile":
        Run(expect="x the FSDP bound"),
    "python -m oq2vl_jax.train --config configs/a100x8.py --dry_run --dry_run_compile": TRAIN_HELP,
    "python -m oq2vl_jax.train --config configs/h100x8.py --dry_run --dry_run_compile": TRAIN_HELP,
    "python -m oq2vl_jax.train --config configs/tpu_v5p_128.py --dry_run --dry_run_compile": TRAIN_HELP,
    "python -m oq2vl_jax.train --config configs/tpu_v5p_128.py --dry_run --dry_run_compile "
    "--config.hardware.target=v5p-8 --config.hardware.num_devices=4 --config.train.global_batch_rows=16": TRAIN_HELP,
    "python -m oq2vl_jax.train --config configs/sft_llava665k.py --dry_run --dry_run_compile": TRAIN_HELP,
    "python -m oq2vl_jax.train --config configs/sft_llava665k.py --dry_run --dry_run_compile "
    "--config.data.packing=none --config.data.max_images_per_row=1 --config.train.global_batch_rows=128 "
    "--config.train.num_steps=5200": TRAIN_HELP,
    # README.md
    "python3 -m pip install torch==2.13.0 --index-url https://download.pytorch.org/whl/cpu": INSTALL,  # network
    'python3 -m pip install -e ".[test]"': INSTALL,
    "python3 -m pytest -q -n 2 tests":
        ByTest("tests/architecture/test_xdist_teardown.py::test_worker_finishes_before_execnet_interrupts_it"),
    "python3 -m oq2vl_jax.train --config configs/demo.py --workdir runs/demo": DEMO,
    "python -m oq2vl_jax.train --config configs/demo.py --workdir runs/demo": DEMO,
    "python -m oq2vl_jax.data.sources index /data/datacomp_shards": Run({"/data/datacomp_shards": "{shards}"},
                                                                        expect="12 records"),
    "python benchmarks/bench_data.py": Help(("benchmarks/bench_data.py",)),
    "python benchmarks/resample_vs_pillow.py": Help(("benchmarks/resample_vs_pillow.py",)),
    "python -m oq2vl_jax.convert import --llm Qwen2.5-1.5B-Instruct --vision ViT-SO400M-14-SigLIP-384 --tokenizer "
    "Qwen2.5-1.5B-Instruct --out ckpt/init --pool 144": CONVERT_ROUND_TRIP,
    "python -m oq2vl_jax.convert import --from prismatic Open-Qwen2VL --out ckpt/ref": CONVERT_ROUND_TRIP,
    "python -m oq2vl_jax.convert export --ckpt runs/demo/checkpoints --to prismatic --out out/prismatic "
    "[--with-vision]": CONVERT_ROUND_TRIP,
    "python -m oq2vl_jax.convert export --ckpt CKPT --to hf-llava --out out/llava": CONVERT_ROUND_TRIP,
    "python -m oq2vl_jax.convert export --ckpt CKPT --to hf-qwen2 --out out/qwen2 --dtype bf16": CONVERT_ROUND_TRIP,
    "python -m oq2vl_jax.train --config configs/h100x8.py --workdir /runs/pretrain "
    "--config.init.llm_dir=/models/Qwen2.5-1.5B-Instruct --config.init.vision_src=/models/ViT-SO400M-14-SigLIP-384 "
    "--config.data.sources='({\"kind\": \"webdataset\", \"path\": \"/data/datacomp\"},)'": TRAIN_DRY,
    "python -m oq2vl_jax.train --config configs/tpu_v5p_128.py --dry_run": Run(expect="dry run: 64 devices"),
    "python tests/architecture/test_import_arrows.py": Run(),
    "python -m oq2vl_jax.bench step --config configs/h100x8.py --rows 2": Help(("-m", "oq2vl_jax.bench")),
    "python benchmarks/torch_peer.py --rows 2": Help(("benchmarks/torch_peer.py",)),
    "bash benchmarks/gpu_run.sh": ShellSyntax("the prepared GPU job"),
    # docs/convert.md
    "python -m oq2vl_jax.convert import --from prismatic Open-Qwen2VL --out ckpt/ref [--vision SRC] [--llm DIR]":
        CONVERT_ROUND_TRIP,
    "python -m oq2vl_jax.convert import --from hf-llava exported-llava --out ckpt/back": CONVERT_ROUND_TRIP,
    "python -m oq2vl_jax.convert import --from llava-unified mlm-filter-qwen2.5-1.5b-gpt4o --out ckpt/mlm_filter "
    "[--vision SRC]": LLAVA_UNIFIED,
    "python -m oq2vl_jax.convert export --ckpt CKPT --to prismatic|hf-llava|hf-qwen2 --out DIR [--dtype fp32|bf16] "
    "[--step N] [--with-vision] [--vision SRC] [--mount-path PATH]": CONVERT_EXPORT_HELP,
    # docs/training.md: a workdir in a bucket (run against moto's S3 server)
    "python -m oq2vl_jax.train --config configs/demo.py --workdir s3://my-bucket/runs/demo": BUCKET_RUN,
    "python -m oq2vl_jax.evaluate --ckpt s3://my-bucket/runs/demo --task demo "
    "--data s3://my-bucket/runs/demo/demo_data --out s3://my-bucket/runs/demo/eval": BUCKET_RUN,
    "python -m oq2vl_jax.convert export --ckpt s3://my-bucket/runs/demo/checkpoints --to hf-qwen2 --out out/qwen2":
        BUCKET_RUN,
    # docs/data.md
    "python -m oq2vl_jax.train --config configs/h100x8.py --workdir /runs/pretrain "
    "--config.data.sources='({\"kind\": \"webdataset\", \"path\": \"/data/datacomp/{00000..01023}.tar\"},)' ...":
        TRAIN_DRY,
    "python -m oq2vl_jax.data.sources index /data/shards [/more/shards ...] [--index-dir DIR] [--workers 8] "
    "[--force]": Run({"/data/shards": "{shards}"}, expect="12 records"),
    "python -m oq2vl_jax.data.sources index '/data/shards/{00000..00099}.tar'":
        Run({"/data/shards/{00000..00099}.tar": "{shards}/{00000..00002}.tar"}, expect="12 records"),
    "python -m oq2vl_jax.data.sources info webdataset '/data/shards/train-*.tar'":
        Run({"/data/shards/train-*.tar": "{shards}/0000*.tar"}, expect="12 records"),
    "python -m oq2vl_jax.data.sources index 's3://my-bucket/datacomp/{00000..01023}.tar'":
        ByTest("tests/data/sources/test_webdataset_buckets.py::"
               "test_index_published_beside_the_shards_is_reused_by_other_hosts"),
    "python -m oq2vl_jax.data.sources convert-packed-json /data/packed_json /data/as_webdataset [--shard-size 10000]":
        ByTest("tests/data/sources/test_sources.py::test_convert_packed_json_to_webdataset"),
    "python -m oq2vl_jax.data.build_tokenizer /data/shards --out /models/my_tokenizer --vocab-size 32000":
        Run({"/data/shards": "{shards}", "/models/my_tokenizer": "{tmp}/tok1"}, expect="tokenizer written to"),
    "python -m oq2vl_jax.data.build_tokenizer '/data/shards/{00000..00099}.tar' --out /models/my_tokenizer "
    "--max-captions 200000": Run({"/data/shards/{00000..00099}.tar": "{shards}/{00000..00002}.tar",
                                  "/models/my_tokenizer": "{tmp}/tok2"}, expect="tokenizer written to"),
    # commands added by other branches (curation, SFT, inference, evaluation)
    'python -m oq2vl_jax.curate score --model /models/siglip-so400m-patch14-384 --shards /data/dc --out '
    '/data/dc_tables':
        Help(("-m", "oq2vl_jax.curate", "score")),
    'python -m oq2vl_jax.curate select --shards /data/dc --tables /data/dc_tables --task siglip --out sel.npz '
    '--rule \'{"and": [{"table": "siglip", "top_fraction": 0.3}, {"basic": {}}]}\'':
        CURATE_AS_DOCUMENTED,
    'python -m oq2vl_jax.generate --ckpt runs/demo/checkpoints --image runs/demo/eval000002.jpg --template '
    'base --prompt ""':
        Help(("-m", "oq2vl_jax.generate")),
    'python -m oq2vl_jax.generate --ckpt CKPT --input prompts.jsonl --out answers.jsonl':
        Help(("-m", "oq2vl_jax.generate")),
    'python -m oq2vl_jax.train --config configs/demo_sft.py --workdir runs/demo_sft':
        TRAIN_DRY,
    'python -m oq2vl_jax.train --config configs/sft_llava665k.py --workdir runs/sft_llava '
    '--config.init.init_from=runs/pretrain/checkpoints --config.data.sources=\'({"kind": "llava", "path": '
    '"/data/llava/llava_v1_5_mix665k.json", "image_root": "/data/llava/images"},)\'':
        ByTest("tests/test_sft_configs.py::test_sft_dry_run_through_the_cli"),
    'python -m oq2vl_jax.evaluate --ckpt runs/demo_sft --task demo --data runs/demo_sft/sft_data --out runs/demo_sft/eval '
    '--prompt chat':
        Help(("-m", "oq2vl_jax.evaluate")),
    'python -m oq2vl_jax.evaluate --ckpt CKPT --task mmmu,mmbench,seedbench,mmstar,ai2d,textvqa,mathvista,pope '
    '--data DIR --out OUT [--prompt reference|chat] [--batch B] [--limit N]':
        Help(("-m", "oq2vl_jax.evaluate")),
    'python -m oq2vl_jax.evaluate compare OUT_A OUT_B':
        Help(("-m", "oq2vl_jax.evaluate", "compare")),
    'python -m oq2vl_jax.curate score --model /models/siglip-so400m-patch14-384 --shards /data/datacomp/shards '
    '--out /data/datacomp/tables --batch-size 256 --dtype bfloat16':
        Help(("-m", "oq2vl_jax.curate", "score")),
    'python -m oq2vl_jax.curate keys --shards /data/datacomp/shards --out /data/datacomp/tables':
        CURATE_AS_DOCUMENTED,
    'python -m oq2vl_jax.curate select --shards /data/datacomp/shards --tables /data/datacomp/tables --out '
    'su85_dfn.npz --rule \'{"and": [{"union": [{"mlm": "/data/datacomp/shards", "task": '
    '"semantic_understanding", "min": 85}, {"uids": "/data/dfn/datacomp_medium_dfn_20m_inds.npy"}]}, {"basic": '
    '{"min_side": 10, "max_aspect": 4}}]}\'':
        CURATE_AS_DOCUMENTED,
    'python -m oq2vl_jax.curate reshard --selection su85_dfn.npz --out /data/datacomp/su85_dfn_shards':
        CURATE_AS_DOCUMENTED,
    'python -m oq2vl_jax.convert import --from llava-unified /models/mlm-filter-qwen2.5-1.5b-gpt4o --out '
    '/ckpts/mlm_filter': LLAVA_UNIFIED,
    'python -m oq2vl_jax.curate mlm --ckpt /ckpts/mlm_filter --shards /data/datacomp/shards --out '
    '/data/datacomp/shards --tasks semantic_understanding --batch-size 64':
        Help(("-m", "oq2vl_jax.curate", "mlm")),
    'python -m oq2vl_jax.evaluate --ckpt CKPT --task mmmu,mmbench,pope --data DIR --out OUT [--limit N] '
    '[--prompt reference|chat] [--batch B] [--seed S] [--dry_run]':
        Help(("-m", "oq2vl_jax.evaluate")),
    'python -m oq2vl_jax.evaluate compare OUT_A OUT_B [--seed S]':
        Help(("-m", "oq2vl_jax.evaluate", "compare")),
    'python -m oq2vl_jax.train --config configs/demo.py --workdir runs/demo '
    '--config.evals=\'("demo_attributes", "demo:limit=64,every=0")\'':
        TRAIN_DRY,
    'python -m oq2vl_jax.generate --ckpt CKPT --image cat.jpg --prompt "What is in the image?" [--template '
    'chat|base] [--max-new-tokens 64] [--temperature 0.7 --top-p 0.9 --top-k 50 --seed 1] [--stop "###"] '
    '[--json]':
        Help(("-m", "oq2vl_jax.generate")),
    'python -m oq2vl_jax.generate --ckpt CKPT --input prompts.jsonl --out answers.jsonl [--batch-size 8]':
        Help(("-m", "oq2vl_jax.generate")),
    'python -m oq2vl_jax.train --config configs/sft_mammoth.py --workdir runs/sft_mammoth '
    '--config.init.init_from=runs/pretrain/checkpoints --config.data.sources=\'({"kind": "mammoth", "path": '
    '"/data/MAmmoTH-VL-Instruct-12M/mammoth_si_10M_simple.jsonl", "image_root": '
    '"/data/MAmmoTH-VL-Instruct-12M/single_image_data"},)\'':
        TRAIN_DRY,
}


def normalize(command: str) -> str:
    return " ".join(re.sub(r"\s+#\s.*$", "", command).split())


def _quotes_closed(command: str) -> bool:
    try:
        shlex.split(command)
        return True
    except ValueError:
        return False


def shown_commands() -> dict[str, list[str]]:
    """{normalized command: [files showing it]} from README.md and docs/*.md."""
    found: dict[str, list[str]] = {}
    for path in [os.path.join(REPO, "README.md")] + sorted(glob.glob(os.path.join(REPO, "docs", "*.md"))):
        block, pending = None, ""
        for line in open(path, encoding="utf-8").read().splitlines():
            s = line.strip()
            if s.startswith("```"):
                block = None if block is not None else s[3:].strip()
                continue
            if block is None or block not in SHELL_BLOCKS:
                continue
            if not pending and not s.startswith(PREFIXES):
                continue
            pending = f"{pending} {s}" if pending else s
            if pending.endswith("\\"):
                pending = pending[:-1]
                continue
            if not _quotes_closed(pending):  # a quoted argument (a JSON rule) spanning lines
                continue
            found.setdefault(normalize(pending), []).append(os.path.relpath(path, REPO))
            pending = ""
    return found


def test_every_shown_command_is_checked():
    shown = shown_commands()
    assert len(shown) > 20
    missing = {c: files for c, files in shown.items() if c not in COMMANDS}
    assert not missing, "add these commands to COMMANDS in tests/architecture/test_docs_commands.py:\n" + "\n".join(
        f"  {files}: {c}" for c, files in missing.items())
    stale = [c for c in COMMANDS if c not in shown]
    assert not stale, f"COMMANDS lists commands no document shows any more: {stale}"


def test_mapped_tests_exist():
    for check in {c for c in COMMANDS.values() if isinstance(c, ByTest)}:
        path, name = check.node.split("::")
        source = open(os.path.join(REPO, path), encoding="utf-8").read()
        assert re.search(rf"^def {re.escape(name)}\(", source, re.M), f"{check.node} does not exist"
        assert f"@pytest.mark.slow\ndef {name}(" not in source, f"{check.node} is not run by CI"


def fill_in(template: str, fill: dict) -> str:
    for name, value in fill.items():
        template = template.replace("{" + name + "}", value)
    return template


def argv_of(command: str, check: Run, fill: dict) -> list[str]:
    """The shown command as argv: optional [...] parts and '...' dropped, paths substituted, extra appended."""
    tokens, out, optional = shlex.split(command), [], False
    for token in tokens:
        if token.startswith("["):
            optional = True
        if not optional and token != "...":
            out.append(fill_in(check.subs[token], fill) if token in check.subs else token)
        if token.endswith("]"):
            optional = False
    assert out[0] in ("python", "python3")
    return [sys.executable] + out[1:] + list(check.extra)


def options_in(command: str) -> set[str]:
    return {m.group(0) for m in re.finditer(r"(?<![\w-])--[a-z][\w-]*", command)} - {"--config", "--help"}


@pytest.fixture(scope="module")
def fill(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("docs_commands")
    shards = write_numbered_shards(str(tmp / "shards"), 12, shard_size=4)  # 00000..00002.tar
    return {"tmp": str(tmp), "shards": shards}


def is_absl(command: str) -> bool:
    return " oq2vl_jax.train " in f" {command} " or " oq2vl_jax.bench " in f" {command} "


BATCH = """
import json, runpy, sys
for argv in json.loads(sys.argv[1]):
    sys.argv = list(argv)
    print("@@@", " ".join(argv), flush=True)
    try:
        if argv[0] == "-m":
            sys.argv = [argv[1]] + argv[2:]
            runpy.run_module(argv[1], run_name="__main__", alter_sys=True)
        else:
            runpy.run_path(argv[0], run_name="__main__")
        code = 0
    except SystemExit as e:
        code = e.code or 0
    print("@@@ exit", code, flush=True)
"""


def run_batch(programs: list[list[str]]) -> dict[str, tuple[int, str]]:
    """Runs argparse programs' argv (after the interpreter) one after another in one process, as `__main__`."""
    proc = subprocess.run([sys.executable, "-c", BATCH, json.dumps(programs)], cwd=REPO,
                          capture_output=True, text=True, timeout=600, env={**os.environ, "PYTHONPATH": REPO})
    assert proc.returncode == 0, proc.stderr[-3000:]
    results = {}
    for chunk in proc.stdout.split("@@@ ")[1:]:
        head, _, body = chunk.partition("\n")
        if head.startswith("exit "):
            results[current] = (int(head.split()[1]), text)
        else:
            current, text = head, body
    return results


def test_argparse_commands(fill):
    """The Run and Help checks of every argparse program, in one process."""
    programs, expectations = [], []
    for command, check in COMMANDS.items():
        if is_absl(command):
            continue
        if isinstance(check, Run):
            argv = argv_of(command, check, fill)[1:]
            expectations.append((command, " ".join(argv), check.expect, set()))
        elif isinstance(check, Help):
            argv = list(check.program) + ["--help"]
            expectations.append((command, " ".join(argv), "usage:", options_in(command)))
        else:
            continue
        programs.append(argv)
    results = run_batch(programs)
    for command, key, expect, options in expectations:
        code, out = results[key]
        assert code == 0, f"{command}\n{out[-2000:]}"
        assert expect in out, f"{command}: {expect!r} not in\n{out[-2000:]}"
        for option in options:
            assert option in out, f"{command}: {option} is not in its --help"


# the README shows the demo as `python3 -m ...` and `python -m ...`: one command, run once
ABSL = [c for c in COMMANDS if is_absl(c) and isinstance(COMMANDS[c], (Run, Help))
        and not (COMMANDS[c] is DEMO and c.startswith("python3 "))]


@pytest.mark.parametrize("command", ABSL)
def test_absl_command(command, fill):
    check = COMMANDS[command]
    if isinstance(check, Help):
        argv = [sys.executable] + list(check.program) + ["--help"]
    else:
        argv = argv_of(command, check, fill)
    # one CPU device, as a user's machine has (the test session simulates 8)
    env = {**os.environ, "PYTHONPATH": REPO, "XLA_FLAGS": "--xla_backend_optimization_level=0"}
    proc = subprocess.run(argv, cwd=REPO, capture_output=True, text=True, timeout=600, env=env)
    out = proc.stdout + proc.stderr
    # absl's --help prints the flags and exits with status 1
    assert proc.returncode == (1 if isinstance(check, Help) else 0), f"{command}\n{out[-3000:]}"
    if isinstance(check, Help):
        assert "flags:" in out, out[-3000:]
        for option in options_in(command):
            assert option in out, f"{command}: {option} is not in its --help"
    else:
        assert check.expect in out, f"{command}: {check.expect!r} not in\n{out[-3000:]}"


def test_gpu_shell_jobs_parse():
    for command, check in COMMANDS.items():
        if isinstance(check, ShellSyntax):
            script = shlex.split(command)[1]
            proc = subprocess.run(["bash", "-n", os.path.join(REPO, script)], capture_output=True, text=True)
            assert proc.returncode == 0, f"{command}: {proc.stderr}"
