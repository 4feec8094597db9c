"""Before the first step: the model architecture a run trains (presets, a checkpoint's meta, or pretrained weights),
its initial parameters (random, pretrained, a checkpoint's), the optimizer and abstract state, and the checks on a
config that can fail before anything heavy happens.
"""

from __future__ import annotations

import dataclasses
from typing import Mapping

import jax
from absl import logging

from oq2vl_jax import checkpoint_io, parallel
from oq2vl_jax.errors import UserError
from oq2vl_jax.models.attention import resolve_backend
from oq2vl_jax.models.presets import ModelOptions, VLMConfig, llm_preset, vision_preset
from oq2vl_jax.storage import paths as storage
from oq2vl_jax.text import contract as contract_lib, tokens
from oq2vl_jax.training import checks
from oq2vl_jax.training.optimizer import make_optimizer
from oq2vl_jax.training.state import ModelParts, TrainState, abstract_state, check_stage, merge_params, split_params

CHECKPOINT_SUBDIR = "checkpoints"
VOCAB_MULTIPLE = 128  # random-init vocabularies are rounded up so the table shards evenly


def model_options(model_cfg: Mapping, platform: str | None = None) -> ModelOptions:
    """The model's options; attention "auto" resolves from `platform`, the mesh's devices' (a step compiled for TPU
    on a CPU host must get splash, not the host's choice); without one, from jax's default backend."""
    attention = model_cfg["attention"]
    if attention == "auto" and platform:
        attention = resolve_backend(attention, platform)
        if attention == "cudnn" and model_cfg["compute_dtype"] == "float32":
            attention = "xla"  # cuDNN's fused attention takes half precision only
    return ModelOptions(compute_dtype=model_cfg["compute_dtype"], attention=attention,
                        remat=model_cfg["remat"], vision_chunk=int(model_cfg["vision_chunk"]),
                        loss_chunk=int(model_cfg["loss_chunk"]), reference_compat=bool(model_cfg["reference_compat"]))


def random_model_config(config) -> VLMConfig:
    """The architecture for random init: presets, with the vocabulary sized to the tokenizer unless given."""
    from oq2vl_jax.data.pipeline import model_vocab_size

    vocab = int(config.model.vocab_size) or -(-model_vocab_size(config.data) // VOCAB_MULTIPLE) * VOCAB_MULTIPLE
    return preset_model_config(config, vocab)


def preset_model_config(config, vocab_size: int = 0) -> VLMConfig:
    """Presets + model.*_overrides; the vision image size is data.image_size."""
    m = config.model
    llm = dataclasses.replace(llm_preset(m.llm), **dict(m.llm_overrides))
    if vocab_size:
        llm = dataclasses.replace(llm, vocab_size=vocab_size)
    vision = dataclasses.replace(vision_preset(m.vision), **dict(m.vision_overrides),
                                 image_size=int(config.data.image_size))
    return VLMConfig(vision=vision, llm=llm, tokens_per_image=int(m.tokens_per_image))


def optimizer_and_state(config, parts: ModelParts, mesh) -> tuple:
    """(optimizer, abstract TrainState, its shardings) for config.train.stage: the one definition used by training,
    --dry_run and the step benchmark (weight decay masked over the trained towers only)."""
    stage = config.train.stage
    trainable, _ = split_params(parts.abstract_params, stage)
    tx = make_optimizer(config.optim, int(config.train.num_steps), parts.decay_mask(trainable))
    abstract, shardings = abstract_state(parts, stage, config.model.frozen_dtype, tx, mesh)
    return tx, abstract, shardings


def validate_config(config, mesh, *, check_paths: bool = True, check_data: bool = True) -> None:
    """Checks that can fail before anything heavy happens; each message names the field to set."""
    check_stage(config.train.stage)
    checks.check_fields(config, check_data=check_data)
    t = config.train
    shards = parallel.batch_shards(mesh)
    micro_rows = t.global_batch_rows // t.micro_batches
    if micro_rows % shards:
        raise UserError(f"a micro-batch has {micro_rows} rows (train.global_batch_rows / train.micro_batches), which "
                        f"does not divide over the {shards} batch shards (mesh data x fsdp = {dict(mesh.shape)}); "
                        "change --config.train.global_batch_rows, --config.train.micro_batches or --config.mesh.*")
    if jax.process_count() > 1 and t.eval_every and not t.eval_batches:
        raise UserError("with several processes set --config.train.eval_batches > 0 (every process must run the same "
                        "number of eval steps)")
    if bool(config.model.reference_compat) != (config.data.label_mode == "reference_compat"):
        logging.warning("model.reference_compat=%s but data.label_mode=%s: reproducing the reference needs both",
                        config.model.reference_compat, config.data.label_mode)
    from oq2vl_jax.evals.specs import parse_specs  # an unknown evals name fails before the workdir is written
    parse_specs(tuple(config.get("evals", ()) or ()))
    if check_paths:
        validate_paths(config, check_data)


def validate_paths(config, check_data: bool = True) -> None:
    from oq2vl_jax.data.config import check_source_specs
    from oq2vl_jax.data.sources.registry import check_source_path
    if check_data and not config.data.sources:
        raise UserError("data.sources is empty; set e.g. --config.data.sources='({\"kind\": \"webdataset\", "
                        "\"path\": \"/data/shards\"},)' (see oq2vl_jax/data/pipeline.py for the kinds)")
    source = config.init.source
    paths = {"pretrained": ("llm_dir", "vision_src"), "checkpoint": ("init_from",), "random": ()}[source]
    for name in paths:
        value = config.init[name]
        if not value or not storage.exists(storage.resolve(value)):
            raise UserError(f"init.{name}: {value!r} does not exist; set --config.init.{name}=PATH "
                            f"(init.source='{source}')")
    for i, spec in enumerate(check_source_specs(config.data.sources, "data.sources") if check_data else ()):
        check_source_path(spec, f"data.sources[{i}]")  # a webdataset path may be a glob, a brace range or a list
    if config.data.tokenizer_dir and not storage.isdir(storage.resolve(config.data.tokenizer_dir)):
        raise UserError(f"data.tokenizer_dir: {config.data.tokenizer_dir!r} is not a directory; set "
                        "--config.data.tokenizer_dir=PATH")


def resolve_tokenizer_dir(config, checkpoint_dir: str, resuming: bool) -> None:
    """An empty data.tokenizer_dir means the tokenizer that came with the weights: the resumed checkpoint's, the
    init_from checkpoint's, or the HF LLM directory's."""
    if config.data.tokenizer_dir:
        return
    if resuming:
        found = checkpoint_io.tokenizer_path(checkpoint_dir)
    elif config.init.source == "checkpoint":
        found = checkpoint_io.tokenizer_path(config.init.init_from)
    elif config.init.source == "pretrained":
        found = config.init.llm_dir
    else:
        found = None
    if found:
        config.data.tokenizer_dir = found


def initial_params(config, parts: ModelParts, mesh, abstract: TrainState, imported: dict | None,
                    compiler_options) -> dict:
    source = config.init.source
    if source == "random":
        return parts.random_params(int(config.seed), mesh, compiler_options)
    if source == "pretrained":
        return imported
    target = merge_params(abstract.trainable, abstract.frozen)
    _, params, _ = checkpoint_io.load_params(config.init.init_from, abstract_params=target)
    return params


def check_image_size(vlm: VLMConfig, config, where: str) -> None:
    if int(config.data.image_size) != vlm.vision.image_size:
        raise UserError(f"data.image_size={config.data.image_size} but the vision tower of {where} takes "
                        f"{vlm.vision.image_size}x{vlm.vision.image_size} images; set "
                        f"--config.data.image_size={vlm.vision.image_size}")


def resumed_model_config(config, meta: dict, where: str) -> VLMConfig:
    """The architecture of the run being resumed: the checkpoint's. model.tokens_per_image must agree (the data
    layout and the data iterator state depend on it)."""
    vlm = VLMConfig.from_dict(meta["model_config"])
    wanted = int(config.model.tokens_per_image)
    if wanted != vlm.tokens_per_image:
        raise UserError(f"model.tokens_per_image={wanted} but the run being resumed in {where} was trained with "
                        f"{vlm.tokens_per_image}; resume with --config.model.tokens_per_image={vlm.tokens_per_image}, "
                        "or start a new --workdir with init.source=checkpoint to change it")
    check_image_size(vlm, config, where)
    return vlm


def run_tokenizer_fingerprint(config, checkpoint_dir: str) -> str | None:
    """tokens.fingerprint of the run's tokenizer: the copy in the checkpoint directory, else data.tokenizer_dir."""
    path = checkpoint_io.tokenizer_path(checkpoint_dir) or config.data.tokenizer_dir
    return tokens.fingerprint(path) if path else None


def check_resumed_data(config, meta: dict, where: str, checkpoint_dir: str) -> None:
    """The data the resumed run is given is the data the step in `where` was trained on: same tokenizer vocabulary,
    chat format and label mode (image size and tokens per image: resumed_model_config). UserError otherwise."""
    given_dir, copy = config.data.tokenizer_dir, checkpoint_io.tokenizer_path(checkpoint_dir)
    given_tokenizer = saved_tokenizer = None
    if given_dir and not (copy and storage.resolve(given_dir) == storage.resolve(copy)):
        given_tokenizer = tokens.fingerprint(given_dir)
        if copy and not checkpoint_io.saved_tokenizer_recorded(meta):  # a step saved before the record
            saved_tokenizer = tokens.fingerprint(copy, what=f"the tokenizer of {checkpoint_dir}")
    checkpoint_io.check_resumed_data(meta, contract_lib.for_data_config(config.data), given_tokenizer, where,
                                     saved_tokenizer)


def with_tokens_per_image(vlm: VLMConfig, tokens_per_image: int, where: str) -> VLMConfig:
    """The projector's pool has no parameters, so one checkpoint serves any pooled size (144 for pre-training, 729
    for SFT): the run's model.tokens_per_image wins over the checkpoint's."""
    if tokens_per_image == vlm.tokens_per_image:
        return vlm
    new = vlm.replace(tokens_per_image=tokens_per_image)
    try:
        new.validate()
    except UserError as e:
        raise UserError(f"model.tokens_per_image: {e}") from e
    logging.info("model.tokens_per_image=%d (the checkpoint %s has %d): same parameters, images pooled to %d tokens",
                 tokens_per_image, where, vlm.tokens_per_image, tokens_per_image)
    return new


def resolve_model_config(config) -> tuple[VLMConfig, dict | None]:
    """(architecture, imported numpy params for init.source=pretrained) of a run that starts fresh."""
    source = config.init.source
    if source == "random":
        vlm = random_model_config(config)
        vlm.validate()
        return vlm, None
    if source == "checkpoint":
        where = config.init.init_from
        _, meta = checkpoint_io.load_meta(where)
        vlm = with_tokens_per_image(VLMConfig.from_dict(meta["model_config"]), int(config.model.tokens_per_image),
                                    where)
        check_image_size(vlm, config, f"init.init_from ({where})")
        return vlm, None
    from oq2vl_jax.pretrained.importer import import_pretrained  # lazy: reads foreign weight files

    vlm, params = import_pretrained(config.init.llm_dir, config.init.vision_src,
                                    tokens_per_image=int(config.model.tokens_per_image),
                                    projector_seed=int(config.init.projector_seed))
    check_image_size(vlm, config, f"init.vision_src ({config.init.vision_src})")
    return vlm, params
