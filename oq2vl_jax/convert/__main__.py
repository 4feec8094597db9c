"""`python -m oq2vl_jax.convert`: build oq2vl_jax checkpoints from pretrained / foreign weights and export them.

  import --llm DIR --vision SRC --tokenizer DIR --out CKPT [--pool N]       HF Qwen2 + SigLIP (HF / timm / big_vision)
  import --from prismatic DIR --out CKPT [--vision SRC] [--llm DIR] [--tokenizer DIR]
  import --from hf-llava DIR --out CKPT
  import --from llava-unified DIR --out CKPT [--vision SRC] [--vision-heads N]   e.g. the released MLM-Filter
  export --ckpt CKPT --to prismatic|hf-llava|hf-qwen2 --out DIR [--dtype bf16|fp32] [--step N] [--with-vision]
         [--mount-path PATH]

`python -m oq2vl_jax.convert import --help` / `export --help` give every option with examples (docs/convert.md has
the details). Prints a short summary; a user mistake prints one `error:` line and exits with status 2.
"""

from __future__ import annotations

import argparse
import logging
import os
import shutil
import sys

from oq2vl_jax.errors import EXIT_USER_ERROR, UserError, report_user_error  # noqa: F401 (EXIT_USER_ERROR: tests)



IMPORT_EXAMPLES = """examples:
  # HF Qwen2.5 + a SigLIP tower (HF dir, timm/open_clip file or dir, big_vision .npz) -> a step-0 checkpoint
  python -m oq2vl_jax.convert import --llm /models/Qwen2.5-1.5B-Instruct \\
      --vision /models/ViT-SO400M-14-SigLIP-384 --out ckpt/init --pool 144
  # the reference's run directory (config.json + checkpoints/latest-checkpoint.pt), e.g. a released Open-Qwen2VL
  python -m oq2vl_jax.convert import --from prismatic /models/Open-Qwen2VL --out ckpt/ref \\
      --vision /models/ViT-SO400M-14-SigLIP-384 --tokenizer /models/Qwen2.5-1.5B-Instruct
  # an HF LLaVA directory written by `export --to hf-llava`
  python -m oq2vl_jax.convert import --from hf-llava out/llava --out ckpt/back
  # a LLaVA-Unified llava_qwen checkpoint, e.g. the released MLM-Filter (SigLIP + aapool_mlp or mlp2x_gelu)
  python -m oq2vl_jax.convert import --from llava-unified /models/mlm-filter-qwen2.5-1.5b-gpt4o --out ckpt/mlm_filter

Train from the result with --config.init.source=checkpoint --config.init.init_from=ckpt/init."""

EXPORT_EXAMPLES = """examples:
  # the latest step of a training run -> the reference's format (loads with prismatic.load)
  python -m oq2vl_jax.convert export --ckpt runs/demo/checkpoints --to prismatic --out out/prismatic --with-vision
  # offline: point the exported config's mount_path at a local directory holding Qwen2.5-1.5B-Instruct
  python -m oq2vl_jax.convert export --ckpt CKPT --to prismatic --out out/prismatic --mount-path /models
  # HF LlavaForConditionalGeneration (729-token checkpoints only) and a plain HF Qwen2 LLM
  python -m oq2vl_jax.convert export --ckpt CKPT --to hf-llava --out out/llava
  python -m oq2vl_jax.convert export --ckpt CKPT --to hf-qwen2 --out out/qwen2 --dtype bf16 --step 1000"""


def _parser() -> argparse.ArgumentParser:
    raw = argparse.RawDescriptionHelpFormatter
    parser = argparse.ArgumentParser(prog="python -m oq2vl_jax.convert", description=__doc__, formatter_class=raw)
    sub = parser.add_subparsers(dest="command", required=True, metavar="{import,export}")

    imp = sub.add_parser("import", help="build an oq2vl_jax checkpoint (step 0, params only)", formatter_class=raw,
                         description="Build an oq2vl_jax checkpoint (Orbax, step 0: params, meta, vision_extra, "
                                     "tokenizer/) from pretrained parts or a foreign checkpoint. Offline, bit-exact.",
                         epilog=IMPORT_EXAMPLES)
    imp.add_argument("--from", dest="source", nargs=2, metavar=("KIND", "DIR"),
                     help="read a prismatic run directory, an hf-llava directory or a LLaVA-Unified (llava_qwen) "
                          "checkpoint instead of --llm/--vision")
    imp.add_argument("--llm", help="HF Qwen2ForCausalLM directory (config.json + safetensors)")
    imp.add_argument("--vision", help="SigLIP: HF directory, timm/open_clip .safetensors/.bin (or its directory), "
                                      "or big_vision .npz")
    imp.add_argument("--tokenizer", help="HF tokenizer directory of the LLM (defaults to --llm for HF imports)")
    imp.add_argument("--out", required=True, help="checkpoint directory to create")
    imp.add_argument("--pool", type=int, default=144, help="image tokens after pooling (a square; 144 pre-training, "
                                                           "729 = the full 27x27 grid for SFT)")
    imp.add_argument("--projector-seed", type=int, default=1152)
    imp.add_argument("--feature-layer", type=int, help="vision block whose output is used (default -2)")
    imp.add_argument("--image-size", type=int, help="vision input size, if the weights do not say")
    imp.add_argument("--vision-heads", type=int, help="vision attention heads, if the weights do not say")
    imp.add_argument("--gelu", choices=("exact", "tanh"), help="override the vision tower's GELU")

    exp = sub.add_parser("export", help="write an oq2vl_jax checkpoint in a foreign format", formatter_class=raw,
                         description="Write an oq2vl_jax checkpoint (the converter's or a training run's; the latest "
                                     "step unless --step) as the reference's prismatic run directory, an HF LLaVA "
                                     "model or an HF Qwen2 LLM. Bit-exact in fp32.",
                         epilog=EXPORT_EXAMPLES)
    exp.add_argument("--ckpt", required=True, help="oq2vl_jax checkpoint directory (converter's or trainer's)")
    exp.add_argument("--to", required=True, choices=("prismatic", "hf-llava", "hf-qwen2"))
    exp.add_argument("--out", required=True, help="directory to create")
    exp.add_argument("--dtype", default="fp32", choices=("fp32", "bf16"))
    exp.add_argument("--step", type=int, help="checkpoint step (default: the latest)")
    exp.add_argument("--with-vision", action="store_true", help="prismatic: also write vision_backbone")
    exp.add_argument("--vision", help="take the vision parts the model does not run from this SigLIP source")
    exp.add_argument("--model-id", help="prismatic: model.model_id in config.json")
    exp.add_argument("--mount-path", default="Qwen",
                     help="prismatic: config.json's mount_path, where prismatic.load finds {mount_path}/"
                          "Qwen2.5-1.5B-Instruct (default 'Qwen', the HF hub org; a local directory offline)")
    return parser


def _vision_overrides(args) -> dict:
    overrides = {}
    if args.feature_layer is not None:
        overrides["feature_layer"] = args.feature_layer
    if args.image_size is not None:
        overrides["image_size"] = args.image_size
    if args.vision_heads is not None:
        overrides["num_heads"] = args.vision_heads
    if args.gelu is not None:
        overrides["hidden_act"] = {"exact": "gelu", "tanh": "gelu_tanh"}[args.gelu]
    return overrides


def _check_tokenizer_early(directory: str | None) -> None:
    """Fails before minutes of weight reading when the tokenizer is unusable."""
    from oq2vl_jax.text import tokens

    if directory is not None:
        tokens.check_qwen2(tokens.open_tokenizer(directory), directory)


def run_import(args) -> list[str]:
    from oq2vl_jax.convert import llava, llava_unified, prismatic
    from oq2vl_jax.convert.write_checkpoint import save_imported
    from oq2vl_jax.pretrained import importer

    if args.source is None:
        if not args.llm or not args.vision:
            raise UserError("import needs --llm DIR and --vision SRC (or --from prismatic|hf-llava DIR)")
        _check_tokenizer_early(args.tokenizer or args.llm)
        imported = importer.import_sources(args.llm, args.vision, tokens_per_image=args.pool,
                                           projector_seed=args.projector_seed,
                                           vision_overrides=_vision_overrides(args))
        return save_imported(imported, args.out, args.tokenizer or args.llm)
    kind, directory = args.source
    _check_tokenizer_early(args.tokenizer)
    if kind == "prismatic":
        imported = prismatic.read(directory, vision_src=args.vision, llm_dir=args.llm)
        tok = args.tokenizer or prismatic.tokenizer_dir(directory) or args.llm
        if tok is None:
            raise UserError(f"'{directory}' carries no tokenizer; pass --tokenizer DIR (the Qwen2.5 tokenizer)")
        return save_imported(imported, args.out, tok)
    if kind in ("hf-llava", "llava-unified"):
        if kind == "hf-llava":
            imported, tok = llava.read(directory)
        else:
            if not args.tokenizer and not os.path.isfile(os.path.join(directory, "tokenizer.json")):
                raise UserError(f"'{directory}' has no tokenizer.json; pass --tokenizer DIR (the LLM's tokenizer)")
            imported, tok = llava_unified.read(directory, vision_src=args.vision,
                                               vision_overrides=_vision_overrides(args))
        try:
            return save_imported(imported, args.out, args.tokenizer or tok)
        finally:
            if tok is not None:
                shutil.rmtree(tok, ignore_errors=True)
    raise UserError(f"unknown --from kind '{kind}'; choose prismatic, hf-llava or llava-unified")


def run_export(args) -> list[str]:
    from oq2vl_jax.convert import exporter

    return exporter.export(args.ckpt, args.to, args.out, dtype=args.dtype, step=args.step,
                           with_vision=args.with_vision, vision_src=args.vision, model_id=args.model_id,
                           mount_path=args.mount_path)


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    for name in ("absl", "jax", "orbax"):
        logging.getLogger(name).setLevel(logging.ERROR)
    try:
        lines = run_import(args) if args.command == "import" else run_export(args)
    except UserError as e:
        return report_user_error(e)
    for line in lines:
        print(line)
    return 0


if __name__ == "__main__":
    sys.exit(main())
