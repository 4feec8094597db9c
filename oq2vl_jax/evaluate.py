"""Benchmark evaluation CLI (docs/evaluation.md).

    python -m oq2vl_jax.evaluate --ckpt CKPT --task mmmu,pope --data DIR --out OUT [--limit N]
        [--prompt reference|chat] [--batch B] [--seed S] [--dry_run]
    python -m oq2vl_jax.evaluate compare OUT_A OUT_B [--seed S]

Writes OUT/<task>/predictions.jsonl (one record per item; a rerun skips finished items), OUT/summary.json and
OUT/report.md. `--dry_run` loads the data and builds every prompt, prints the item counts and one prompt per task,
and loads no model. Mistakes (missing file, unknown task, a different run already in OUT) print one line, exit 2.
"""

from __future__ import annotations

import argparse
import json
import logging as std_logging
import os
import sys

from absl import logging

from oq2vl_jax.errors import QuietLibraries, UserError, report_user_error

RUN_FILE = "run.json"


def _eval_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m oq2vl_jax.evaluate", description=__doc__.split("\n\n")[0])
    p.add_argument("--ckpt", default="", help="checkpoint directory (a training run or an imported checkpoint)")
    from oq2vl_jax.evals.registry import TASKS

    p.add_argument("--task", required=True, help=f"comma-separated task names: {', '.join(TASKS)}")
    p.add_argument("--data", required=True, help="directory with one folder per benchmark (docs/evaluation.md)")
    p.add_argument("--out", required=True, help="output directory (created; a rerun resumes)")
    p.add_argument("--limit", type=int, default=0, help="evaluate only the first N items of each task (0 = all)")
    p.add_argument("--prompt", choices=("reference", "chat"), default="reference",
                   help="reference: the original harness's raw prompts; chat: the user message in the checkpoint's "
                        "chat template (its prompt contract, docs/inference.md)")
    p.add_argument("--batch", type=int, default=8, help="items per model call per process")
    p.add_argument("--seed", type=int, default=0, help="seed of the scorers' random fallback guesses")
    p.add_argument("--dry_run", action="store_true", help="check data and prompts; load no model")
    return p


def _compare_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m oq2vl_jax.evaluate compare")
    p.add_argument("out_a")
    p.add_argument("out_b")
    p.add_argument("--seed", type=int, default=0, help="bootstrap seed")
    return p


def _check_run_file(out_dir: str, run: dict) -> None:
    """One output directory holds one run: a rerun must use the same checkpoint, prompt style, seed and limit."""
    path = os.path.join(out_dir, RUN_FILE)
    if os.path.exists(path):
        with open(path) as f:
            old = json.load(f)
        diff = [k for k in ("ckpt", "prompt", "seed", "limit") if old.get(k) != run.get(k)]
        if diff:
            raise UserError(f"--out {out_dir} holds a run with different {', '.join(diff)} "
                            f"({', '.join(f'{k}={old.get(k)!r}' for k in diff)}); choose another --out")
    else:
        os.makedirs(out_dir, exist_ok=True)
        tmp = path + ".tmp"
        with open(tmp, "w") as f:
            json.dump(run, f, indent=2, sort_keys=True)
        os.replace(tmp, path)


def evaluate(args, model=None, *, process_index: int = 0, process_count: int = 1, barrier=None) -> dict:
    """Runs the tasks; `model` is an EvalModel (loaded from --ckpt when None). Returns the summary.

    --data, --out and --ckpt may be gs:// or s3:// prefixes: the benchmark folders are read from a local copy (made
    once per object version, storage/local_copy.py); the outputs are written to a local staging directory holding
    what OUT already has (so a rerun resumes) and copied into the bucket, each file whole, when the run ends (also
    when it stops on an error or Ctrl-C). A bucket OUT is for one process: several processes share their prediction
    parts through OUT while they run, which needs a directory they all see."""
    from oq2vl_jax.storage import local_copy
    from oq2vl_jax.storage.mirror import staged_dir

    args = argparse.Namespace(**{**vars(args), "data": local_copy.local_dir(args.data)})
    if args.dry_run:
        return _evaluate(args, model, process_index=process_index, process_count=process_count, barrier=barrier)
    with staged_dir(args.out) as out:
        return _evaluate(argparse.Namespace(**{**vars(args), "out": out}), model, process_index=process_index,
                         process_count=process_count, barrier=barrier)


def _evaluate(args, model=None, *, process_index: int = 0, process_count: int = 1, barrier=None) -> dict:
    from oq2vl_jax.evals import registry, suite
    from oq2vl_jax.storage import paths as storage

    tasks = registry.get_tasks(args.task)
    if args.limit < 0:
        raise UserError(f"--limit must be >= 0, got {args.limit}")
    loaded = suite.load(tasks, args.data, args.limit)  # every file is checked before any model is loaded
    if args.dry_run:
        for task, items in loaded:
            print(f"{task.name}: {len(items)} items")
            if items:
                from oq2vl_jax.evals.kit import display

                for name, req in task.requests(items[0], args.prompt).items():
                    print(f"  [{name}] {req.kind}, {len(req.images)} image(s): {display(req)!r}")
        return {}
    run = {"ckpt": storage.resolve(args.ckpt) if args.ckpt else "", "prompt": args.prompt, "seed": args.seed,
           "limit": args.limit}
    if process_index == 0:
        _check_run_file(args.out, run)
    if model is None:
        from oq2vl_jax.evals.checkpoint_model import load_model

        model = load_model(args.ckpt)
        process_index, process_count, barrier = model.process_index, model.process_count, model.barrier
    return suite.run(loaded, model, args.out, run_info=run, style=args.prompt, batch=args.batch, seed=args.seed,
                     process_index=process_index, process_count=process_count, barrier=barrier)


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    std_logging.getLogger("absl").addFilter(QuietLibraries())
    logging.set_verbosity(logging.INFO)
    try:
        if argv[:1] == ["compare"]:
            from oq2vl_jax.evals.compare import compare, render

            args = _compare_parser().parse_args(argv[1:])
            print(render(compare(args.out_a, args.out_b, seed=args.seed), args.out_a, args.out_b), end="")
            return 0
        args = _eval_parser().parse_args(argv)
        if not args.dry_run and not args.ckpt:
            raise UserError("--ckpt is required (or --dry_run to check data and prompts only)")
        evaluate(args)
    except UserError as e:
        return report_user_error(e)
    return 0


if __name__ == "__main__":
    sys.exit(main())
