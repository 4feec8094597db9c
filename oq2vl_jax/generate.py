"""`python -m oq2vl_jax.generate`: answers from a checkpoint, for one prompt or a JSONL file of them.

  python -m oq2vl_jax.generate --ckpt CKPT --image PATH --prompt TEXT [--template chat|base] [--max-new-tokens N]
                               [--temperature T --top-p P --top-k K --seed S] [--stop STR ...] [--json]
  python -m oq2vl_jax.generate --ckpt CKPT --input prompts.jsonl --out answers.jsonl [--batch-size 8] [...]

CKPT: an oq2vl_jax checkpoint directory (latest step unless --step; `convert import` turns a released hf-llava or
prismatic model into one) or a training workdir.
--image may be repeated (several images, in order) or left out (text only). Batch input lines are
`{"id"?: ..., "image": PATH | "images": [PATH, ...], "prompt" | "text": STR | "messages": [...]}`; relative image paths
are resolved against the input file's directory. Each output line is `{"index", "id", "answer", "finish_reason",
"num_tokens", "token_ids", "prompt", "input_sha1"}` (prompt: as the model saw it, image blocks as `<image:N tokens>`), written a batch at a time; rerunning the same command resumes after the last answer
(the input lines' hashes must match the answers already there). A user mistake prints one `error:` line, exit 2.
The chat template follows the checkpoint's prompt contract (docs/inference.md); --chat-format / --label-mode override it.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import logging
import os
import sys
import time

from oq2vl_jax.errors import UserError, report_user_error
from oq2vl_jax.text.chat import CHAT_FORMATS
from oq2vl_jax.text.contract import LABEL_MODES


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m oq2vl_jax.generate", description=__doc__.split("\n\n")[0])
    p.add_argument("--ckpt", required=True, help="checkpoint directory or training workdir")
    p.add_argument("--step", type=int, help="checkpoint step (default: the latest)")
    p.add_argument("--image", action="append", default=[], help="image file (repeat for several)")
    p.add_argument("--prompt", help="prompt text (single mode)")
    p.add_argument("--input", help="JSONL of prompts (batch mode)")
    p.add_argument("--out", help="JSONL of answers to write or resume (batch mode)")
    p.add_argument("--template", default="chat", choices=("chat", "base"),
                   help="chat: the SFT conversation with a generation prompt; base: pre-training `<s> [image] \\n text`")
    p.add_argument("--chat-format", default=None, choices=CHAT_FORMATS,
                   help="override the checkpoint's chat format (default: the one it records; docs/inference.md)")
    p.add_argument("--label-mode", default=None, choices=LABEL_MODES,
                   help="override the checkpoint's label mode (reference_compat: the original's dropped token)")
    p.add_argument("--max-new-tokens", type=int, default=64)
    p.add_argument("--temperature", type=float, default=0.0, help="0 = greedy")
    p.add_argument("--top-p", type=float, default=1.0)
    p.add_argument("--top-k", type=int, default=0)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--stop", action="append", default=[], help="stop string (repeatable)")
    p.add_argument("--batch-size", type=int, default=8, help="prompts per generate call (batch mode)")
    p.add_argument("--tensor-parallel", type=int, default=1, help="devices per tensor-parallel group")
    p.add_argument("--json", action="store_true",
                   help="single mode: print one JSON object (answer, prompt as the model saw it, token ids)")
    return p


def _check_args(args) -> None:
    if (args.input is None) != (args.out is None):
        raise UserError("batch mode needs both --input FILE and --out FILE")
    if args.input is not None:
        if args.prompt is not None or args.image:
            raise UserError("--prompt/--image are for single mode; batch mode reads them from --input")
        if not os.path.isfile(args.input):
            raise UserError(f"--input: '{args.input}' is not a file")
    elif args.prompt is None:
        raise UserError("give --prompt TEXT (use --prompt \"\" for an empty prompt) or --input FILE --out FILE")
    for path in args.image:
        if not os.path.isfile(path):
            raise UserError(f"--image: '{path}' is not a file")
    if not os.path.exists(args.ckpt):
        raise UserError(f"--ckpt: '{args.ckpt}' does not exist")
    if args.max_new_tokens < 1 or args.batch_size < 1:
        raise UserError("--max-new-tokens and --batch-size must be >= 1")
    if args.temperature < 0 or not 0 < args.top_p <= 1 or args.top_k < 0:
        raise UserError("need --temperature >= 0, 0 < --top-p <= 1 and --top-k >= 0")


def read_requests(path: str) -> list[tuple[dict, str]]:
    """(request, sha1 of its line) per non-empty input line; image paths made absolute. Raises UserError."""
    base = os.path.dirname(os.path.abspath(path))
    out = []
    with open(path, encoding="utf-8") as f:
        for number, line in enumerate(f, 1):
            if not line.strip():
                continue
            try:
                record = json.loads(line)
            except json.JSONDecodeError as e:
                raise UserError(f"{path}:{number}: not JSON ({e.msg})") from e
            if not isinstance(record, dict):
                raise UserError(f"{path}:{number}: each line must be a JSON object")
            request = {k: v for k, v in record.items() if k != "prompt"}
            if "prompt" in record:
                if "text" in record:
                    raise UserError(f"{path}:{number}: give 'prompt' or 'text', not both")
                request["text"] = record["prompt"]
            for key in ("image", "images"):
                if key in request:
                    paths = request[key] if key == "images" else [request[key]]
                    if not isinstance(paths, list) or not all(isinstance(p, str) for p in paths):
                        raise UserError(f"{path}:{number}: '{key}' must be a path or a list of paths")
                    resolved = [p if os.path.isabs(p) else os.path.join(base, p) for p in paths]
                    for p in resolved:
                        if not os.path.isfile(p):
                            raise UserError(f"{path}:{number}: image '{p}' is not a file")
                    request[key] = resolved if key == "images" else resolved[0]
            out.append((request, hashlib.sha1(line.strip().encode()).hexdigest()))
    if not out:
        raise UserError(f"--input: '{path}' holds no prompts")
    return out


def read_done(out_path: str, requests: list[tuple[dict, str]]) -> int:
    """How many answers `out_path` already holds for these requests (0 if it does not exist). An interrupted last
    line is dropped (rewritten atomically); answers for other input refuse the run."""
    if not os.path.exists(out_path):
        return 0
    with open(out_path, encoding="utf-8") as f:
        lines = f.read().split("\n")
    good = []
    for i, line in enumerate(lines):
        if not line.strip():
            continue
        try:
            record = json.loads(line)
        except json.JSONDecodeError:
            if i >= len(lines) - 2 and not line.endswith("}"):  # the last line, cut by an interruption
                break
            raise UserError(f"--out: '{out_path}' is not an answers file of this tool (line {i + 1}); choose a new "
                            "--out")
        index = len(good)
        if (not isinstance(record, dict) or record.get("index") != index or index >= len(requests)
                or record.get("input_sha1") != requests[index][1]):
            raise UserError(f"--out: '{out_path}' holds answers for other input (line {i + 1} does not match "
                            f"--input line {index + 1}); choose a new --out or the matching --input")
        good.append(line)
    if len(good) != sum(1 for line in lines if line.strip()):
        tmp = out_path + ".tmp"
        with open(tmp, "w", encoding="utf-8") as f:
            f.write("".join(line + "\n" for line in good))
        os.replace(tmp, out_path)
    return len(good)


def _sampling(args) -> dict:
    return dict(max_new_tokens=args.max_new_tokens, temperature=args.temperature, top_k=args.top_k,
                top_p=args.top_p, seed=args.seed)


def _eta(seconds: float) -> str:
    seconds = int(max(0, seconds))
    return f"{seconds // 3600}:{seconds // 60 % 60:02d}:{seconds % 60:02d}"


def run_batch(vlm, args) -> list[str]:
    from absl import logging as absl_logging

    from oq2vl_jax.inference.sampler import SamplingParams

    absl_logging.set_verbosity(absl_logging.INFO)
    requests = read_requests(args.input)
    done = read_done(args.out, requests)
    if done == len(requests):
        return [f"all {done} prompts already answered in {args.out}"]
    sampling = SamplingParams(**_sampling(args))
    total, start, tokens = len(requests) - done, time.perf_counter(), 0
    with open(args.out, "a", encoding="utf-8") as out:
        for first in range(done, len(requests), args.batch_size):
            part = requests[first:first + args.batch_size]
            built = vlm.prompts([r for r, _ in part], args.template)
            answers = vlm.generate_prompts(built, sampling, stop=args.stop)
            lines = []
            for k, ((request, sha), g) in enumerate(zip(part, answers)):
                lines.append(json.dumps({"index": first + k, "id": request.get("id"), "answer": g.text,
                                         "finish_reason": g.finish_reason, "num_tokens": len(g.token_ids),
                                         "token_ids": list(g.token_ids), "prompt": vlm.describe_prompt(built[k]),
                                         "input_sha1": sha}, ensure_ascii=False) + "\n")
                tokens += len(g.token_ids)
            out.write("".join(lines))
            out.flush()
            os.fsync(out.fileno())
            made = first + len(part) - done
            elapsed = time.perf_counter() - start
            absl_logging.info("generate: %d/%d prompts | %.2f prompts/s | %.1f tokens/s | ETA %s", first + len(part),
                              len(requests), made / elapsed, tokens / elapsed,
                              _eta(elapsed / made * (total - made)))
    return [f"wrote {total} answers to {args.out} ({done} were already there)"]


def run_single(vlm, args) -> list[str]:
    request = {"text": args.prompt}
    if args.image:
        request["images"] = list(args.image)
    g = vlm.generate([request], template=args.template, stop=args.stop, details=True, **_sampling(args))[0]
    if args.json:
        prompt = vlm.prompts([request], args.template)[0]
        return [json.dumps({"answer": g.text, "finish_reason": g.finish_reason, "num_tokens": len(g.token_ids),
                            "token_ids": list(g.token_ids), "prompt": vlm.describe_prompt(prompt),
                            "prompt_contract": vlm.contract.to_dict()}, ensure_ascii=False)]
    return [g.text]


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    for name in ("jax", "orbax", "absl"):  # orbax warns about items inference does not restore
        logging.getLogger(name).setLevel(logging.ERROR)
    if args.input is not None:
        logging.getLogger("absl").setLevel(logging.INFO)
    try:
        _check_args(args)
        from oq2vl_jax.inference import VLMInference

        if args.input is not None:
            read_requests(args.input)  # bad input fails before the model loads
        vlm = VLMInference.load(args.ckpt, step=args.step, tensor_parallel=args.tensor_parallel,
                                chat_format=args.chat_format, label_mode=args.label_mode)
        if vlm.contract_warning:
            print(f"warning: {vlm.contract_warning}", file=sys.stderr)
        lines = run_batch(vlm, args) if args.input is not None else run_single(vlm, args)
    except UserError as e:
        return report_user_error(e)
    for line in lines:
        print(line)
    return 0


if __name__ == "__main__":
    sys.exit(main())
