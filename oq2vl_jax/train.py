"""`python -m oq2vl_jax.train --config configs/demo.py --workdir runs/demo`: train (or resume) a VLM.

Prints progress lines, the final loss and where the checkpoint landed. With the demo config it first writes the
synthetic demo data (once, into --workdir or demo.data_dir) and at the end scores how well the model names the
colour, shape and position of held-out images (oq2vl_jax/demo/attributes.py).

`--dry_run` builds the abstract train state and its shardings on a simulated device count and prints per-device
memory estimates (oq2vl_jax/training/dry_run.py). `--dry_run --dry_run_compile` compiles the real step for the
config's `hardware.target` (a TPU slice or GPU node this machine does not have) and prints what the compiled program
costs and a projection (oq2vl_jax/training/plan.py, docs/performance.md).

A mistake in the flags or the config (a missing config file, an unknown or mistyped field, a bad value, an unusable
workdir) prints one `error:` line and exits with status 2 before anything is compiled. SIGTERM and Ctrl-C stop after
the current step with a checkpoint (training/stop.py); their handlers are installed first, before the slow imports.
"""

if __name__ == "__main__":  # before anything slow, so a signal during start-up is kept, not fatal
    from oq2vl_jax.training.stop import StopSignal
    _STOP = StopSignal().install()

import json  # noqa: E402
import os  # noqa: E402
import re  # noqa: E402
import sys  # noqa: E402

from absl import app, flags, logging  # noqa: E402
from ml_collections import config_flags  # noqa: E402

from oq2vl_jax.errors import QuietLibraries, UserError, report_user_error  # noqa: E402

_REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
EXIT_INTERRUPTED = 130


def define_flags() -> dict:
    """Flags exist only when the trainer is the program (importing this module defines none)."""
    return {
        "config": config_flags.DEFINE_config_file("config", os.path.join(_REPO, "configs", "demo.py"),
                                                  "Training config file (configs/*.py)."),
        "workdir": flags.DEFINE_string("workdir", "runs/demo", "Run directory: checkpoints, metrics, demo data."),
        "dry_run": flags.DEFINE_bool("dry_run", False,
                                     "Build the abstract state and shardings only; print memory estimates."),
        "dry_run_compile": flags.DEFINE_bool(
            "dry_run_compile", False, "With --dry_run: compile the real step for hardware.target (a TPU slice, a GPU "
            "node, cpu-N) and print compiled memory, FLOPs, collectives vs the FSDP bound and a projection."),
        "dry_run_save_hlo": flags.DEFINE_string(
            "dry_run_save_hlo", "", "With --dry_run_compile: also write the compiled program's optimized HLO text to "
            "this new file."),
        "dry_run_devices": flags.DEFINE_integer("dry_run_devices", 0,
                                                "Simulated device count for --dry_run (0 = hardware.num_devices)."),
    }


def _flag_value(argv: list[str], name: str) -> str | None:
    """The last value given for --name (absl: the last one wins)."""
    value = None
    for i, arg in enumerate(argv):
        if arg.startswith(f"--{name}="):
            value = arg.split("=", 1)[1]
        elif arg == f"--{name}" and i + 1 < len(argv):
            value = argv[i + 1]
    return value


def _flag_error(e: Exception, argv: list[str]) -> str:
    """One line for a flag / config mistake that ml_collections reports as a traceback."""
    text = " ".join(str(e).replace("\\n", " ").split())
    if isinstance(e, AttributeError) and "has no attribute 'get_config'" in str(e):
        return (f"--config {_flag_value(argv, 'config')}: the file defines no get_config() (a config file returns "
                "its ml_collections.ConfigDict from get_config(); see configs/base.py)")
    suggestion = re.search(r'Did you mean "([^"]+)"', str(e))
    unknown = re.search(r"'([^'\\]+)", str(e))
    if isinstance(e, (AttributeError, KeyError)) and unknown:
        key = unknown.group(1)
        arg = next((a.split("=", 1)[0] for a in argv if a.startswith("--config.")
                    and key in a.split("=", 1)[0].split(".")), f"--config.*.{key}")
        return (f"{arg}: the config has no field '{key}'"
                + (f'; did you mean "{suggestion.group(1)}"?' if suggestion else "; see configs/base.py for the fields"))
    return text


def parse_flags(argv: list[str]) -> list[str]:
    """absl's flag parsing, with every mistake as one `error:` line and exit status 2."""
    config_path = _flag_value(argv[1:], "config")
    if config_path is not None and not os.path.isfile(config_path.split(":", 1)[0]):
        _exit_user_error(f"--config {config_path}: no such config file (the configs are in {_REPO}/configs/*.py)")
    try:
        rest = flags.FLAGS(argv)
        flags.FLAGS["config"].value.keys()  # a config that failed to load raises on first use: make it here
    except flags.Error as e:
        _exit_user_error(" ".join(str(e).split()))
    except Exception as e:  # ml_collections: a config file that fails, an unknown field, a type it cannot take
        _exit_user_error(_flag_error(e, argv[1:]))
    return rest


def _exit_user_error(message: str) -> None:
    sys.exit(report_user_error(UserError(message)))


def _score_demo(config, result, paths: dict, workdir: str) -> None:
    """Prints and writes the held-out attribute scores of the final parameters: those the run's evaluators computed
    at its last step (configs/demo.py runs them), else computed here."""
    import jax

    from oq2vl_jax.demo import attributes as demo_attributes
    from oq2vl_jax.evals.specs import ATTRIBUTES

    step, scores = result.evaluator_scores.get(ATTRIBUTES, (None, None))
    if step != result.last_step:
        params = jax.device_get(dict(result.state.trainable) | dict(result.state.frozen))
        scores = demo_attributes.attribute_scores(
            lambda p, batch: result.parts.model(p)(batch), params, paths, config.data.tokenizer_dir,
            tokens_per_image=result.model_config.tokens_per_image, row_length=config.demo.eval_row_length,
            image_size=config.data.image_size)
    for line in demo_attributes.score_lines(scores):
        print(line)
    from oq2vl_jax.storage import paths as storage
    storage.write_text(storage.join(workdir, "attribute_scores.json"), json.dumps(scores, indent=2))


def train(config, workdir: str, stop) -> None:
    from oq2vl_jax.training import checks

    checks.check_fields(config)  # before the slow imports: a mistake costs a second

    import jax

    from oq2vl_jax import parallel
    from oq2vl_jax.demo import setup as demo_setup, sft as demo_sft
    from oq2vl_jax.training import loop

    parallel.initialize_distributed(config.distributed)
    demo: dict = {}

    def prepare(config, workdir: str) -> None:  # None unless the demo data (configs/demo.py, demo_sft.py) is used
        demo["shapes"] = demo_setup.prepare_demo_data(config, workdir)
        demo["sft"] = demo_sft.prepare_sft_demo(config, workdir)

    result = loop.run(config, workdir, stop=stop, prepare=prepare)  # validates, locks, prepares once, then trains
    if result is None:
        print(f"stopped by {stop.received.upper()} during start-up: nothing trained, nothing saved")
        return
    if jax.process_index() != 0:
        return
    print(f"steps {result.start_step} -> {result.last_step} ({result.stopped_by}); first loss "
          f"{_fmt(result.first_loss)}, final loss {_fmt(result.last_loss)}"
          + (f", eval loss {result.eval_loss:.4f}" if result.eval_loss is not None else ""))
    if result.last_step > 0:
        print(f"checkpoint: {result.checkpoint_dir}/{result.last_step}")
    scorable = jax.process_count() == 1 and result.stopped_by in ("num_steps", "data_exhausted")  # one host only
    if demo.get("shapes") is not None and config.demo.score_attributes and scorable:
        _score_demo(config, result, demo["shapes"], result.workdir)
    if demo.get("sft") is not None and config.demo_sft.score_answers and scorable:
        from oq2vl_jax.demo.answers import report_sft_demo
        report_sft_demo(result, config, demo["sft"], result.workdir)


def main(argv, flag_values: dict, stop=None) -> None:
    del argv
    logging.get_absl_handler().addFilter(QuietLibraries())
    from oq2vl_jax.storage import paths as storage
    config, workdir = flag_values["config"].value, storage.resolve(flag_values["workdir"].value)
    try:
        if flag_values["dry_run"].value and stop is not None:
            # a dry run saves nothing: SIGTERM / Ctrl-C stop it at once (`timeout`, a scheduler), as without our handlers
            stop.restore()
            if stop.received:
                _exit_user_error(f"stopped by {stop.received.upper()} before the dry run")
        if flag_values["dry_run"].value and flag_values["dry_run_compile"].value:
            from oq2vl_jax.training.plan import plan
            print(plan(config, save_hlo=flag_values["dry_run_save_hlo"].value))
            return
        if flag_values["dry_run"].value:
            from oq2vl_jax.training.dry_run import dry_run
            print(dry_run(config, flag_values["dry_run_devices"].value))
            return
        train(config, workdir, stop)
    except UserError as e:
        _exit_user_error(" ".join(str(e).split()))
    except KeyboardInterrupt:
        print("error: interrupted (a second Ctrl-C): stopped without a checkpoint for the current step; rerun the "
              "same command to resume from the last one", file=sys.stderr)
        sys.exit(EXIT_INTERRUPTED)


def _fmt(x) -> str:
    return "n/a" if x is None else f"{x:.4f}"


if __name__ == "__main__":
    _flags = define_flags()
    app.run(lambda argv: main(argv, _flags, _STOP), flags_parser=parse_flags)
