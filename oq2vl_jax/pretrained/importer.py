"""oq2vl_jax weights from pretrained parts: an HF Qwen2 LLM + a SigLIP vision tower in any of the supported namings
(HF, timm / open_clip, big_vision) + a freshly initialised projector.

`import_pretrained` is what the trainer calls to get initial weights (init.source=pretrained); `import_sources` also
returns the vision parts the model does not run (`vision_extra`), which `convert import` stores beside the parameters
(oq2vl_jax/convert/write_checkpoint.py).
"""

from __future__ import annotations

import dataclasses
import math
import os
from typing import Any

import numpy as np

from oq2vl_jax.pretrained import big_vision, hf, tensor_files, timm
from oq2vl_jax.errors import UserError
from oq2vl_jax.models.presets import Qwen2Config, SiglipConfig, VLMConfig

PROJECTOR_SEED = 1152  # the reference seeds torch with the vision width before building the projector
# Fields a user may set on an imported tower; the others are fixed by the weights' shapes.
VISION_OVERRIDABLE = ("feature_layer", "image_size", "hidden_act", "num_heads", "layer_norm_eps")
# Weight files looked for in a timm / open_clip directory, in order.
VISION_DIR_FILES = ("open_clip_model.safetensors", "model.safetensors", "open_clip_pytorch_model.bin",
                    "pytorch_model.bin")


@dataclasses.dataclass
class Imported:
    config: VLMConfig
    params: dict
    vision_extra: dict
    description: list[str]  # one line per source, for the CLI summary
    llm_hf_config: dict | None = None  # the source config.json of the LLM, so exports can keep its other fields
    contract: Any = None  # text/contract.py PromptContract the source was taught with (None: never chat-trained)


def apply_vision_overrides(cfg: SiglipConfig, overrides: dict | None, where: str) -> SiglipConfig:
    overrides = dict(overrides or {})
    fields = {f.name for f in dataclasses.fields(SiglipConfig)}
    unknown = set(overrides) - fields
    if unknown:
        raise UserError(f"unknown vision override(s) {sorted(unknown)}; allowed: {list(VISION_OVERRIDABLE)}")
    for name in set(overrides) - set(VISION_OVERRIDABLE):
        if overrides[name] != getattr(cfg, name):
            raise UserError(f"vision override {name}={overrides[name]} contradicts the weights of {where}, which "
                            f"have {name}={getattr(cfg, name)}")
    new = dataclasses.replace(cfg, **overrides)
    if new.grid != cfg.grid:
        raise UserError(f"vision image_size={new.image_size} gives a {new.grid}x{new.grid} patch grid, but the "
                        f"position embeddings of {where} are for {cfg.grid}x{cfg.grid}")
    return new


def _vision_dir_kind(path: str) -> tuple[str, str]:
    """('hf', dir) for an HF SigLIP directory, else ('file', weight file) found in a timm / open_clip directory."""
    config_path = os.path.join(path, "config.json")
    if os.path.isfile(config_path):
        config = tensor_files.read_json(config_path)
        if "vision_config" in config or str(config.get("model_type", "")).startswith("siglip"):
            return "hf", path
    for name in VISION_DIR_FILES:
        if os.path.isfile(os.path.join(path, name)):
            return "file", os.path.join(path, name)
    raise UserError(f"'{path}' is neither an HF SigLIP directory (config.json with a SigLIP vision config) nor a "
                    f"timm / open_clip directory (one of {list(VISION_DIR_FILES)})")


def vision_from_source(source: tensor_files.TensorSource, *, overrides: dict | None = None, dtype=np.float32,
                       hf_config: dict | None = None, path: str | None = None,
                       ) -> tuple[SiglipConfig, dict, dict, str]:
    """(config, vision params, vision_extra, naming) from tensors in any supported naming."""
    if hf_config is not None:
        prefix = hf.hf_vision_prefix(source)
        cfg = apply_vision_overrides(hf.siglip_config_from_hf(hf_config, f"{source.where} config.json"), overrides,
                                     source.where)
        cfg.validate()
        get = source.getter(prefix, dtype)
        vision = hf.siglip_from_hf(get, cfg, prefix="")
        extra = hf.siglip_extra_from_hf(get, {n[len(prefix):] for n in source.names if n.startswith(prefix)}, cfg,
                                        prefix="")
        return cfg, vision, extra, "HF SigLIP"
    prefix = timm.find_prefix(source)
    if prefix is not None:
        cfg = apply_vision_overrides(timm.config_from_weights(source, prefix, path), overrides, source.where)
        cfg = timm.with_heads(cfg, source.where)
        cfg.validate()
        vision, extra = timm.vision_from_timm(source, cfg, prefix, dtype)
        return cfg, vision, extra, "timm"
    prefix = big_vision.find_prefix(source)
    if prefix is not None:
        cfg = apply_vision_overrides(big_vision.config_from_weights(source, prefix), overrides, source.where)
        cfg.validate()
        vision, extra = big_vision.vision_from_big_vision(source, cfg, prefix, dtype)
        return cfg, vision, extra, "big_vision"
    if source.find_prefix("embeddings.patch_embedding.weight") is not None:
        raise UserError(f"{source.where} has HF SigLIP names but no config; pass its directory (with config.json)")
    raise UserError(f"{source.where}: unknown vision weight layout (expected timm 'patch_embed.proj.weight', "
                    f"big_vision 'params/img/embedding/kernel' or HF 'vision_model.embeddings.*' names)")


def load_vision(src: str, *, overrides: dict | None = None, dtype=np.float32) -> tuple[SiglipConfig, dict, dict, str]:
    """A SigLIP tower from an HF directory, a timm / open_clip file or directory, or a big_vision .npz."""
    if os.path.isdir(src):
        kind, path = _vision_dir_kind(src)
        if kind == "hf":
            return vision_from_source(tensor_files.open_hf_weights(src), overrides=overrides, dtype=dtype,
                                      hf_config=tensor_files.read_json(os.path.join(src, "config.json")))
        src = path
    if not os.path.exists(src):
        raise UserError(f"vision source '{src}' does not exist")
    return vision_from_source(tensor_files.open_tensor_file(src), overrides=overrides, dtype=dtype, path=src)


def load_llm(llm_dir: str, dtype=np.float32) -> tuple[Qwen2Config, dict, dict]:
    """(config, `llm` tree, the source config.json) of an HF Qwen2ForCausalLM directory."""
    if not os.path.isdir(llm_dir):
        raise UserError(f"LLM directory '{llm_dir}' does not exist")
    hf_config = tensor_files.read_json(os.path.join(llm_dir, "config.json"), "LLM config")
    cfg = hf.qwen2_config_from_hf(hf_config, os.path.join(llm_dir, "config.json"))
    source = tensor_files.open_hf_weights(llm_dir)
    prefix = source.find_prefix("embed_tokens.weight")
    if prefix is None:
        raise UserError(f"{source.where} has no '...embed_tokens.weight': not a Qwen2ForCausalLM checkpoint")
    if not cfg.tie_word_embeddings and "lm_head.weight" not in source:
        raise UserError(f"{source.where}: config says tie_word_embeddings=false but there is no 'lm_head.weight'")
    tree = hf.qwen2_from_hf(source.getter("", dtype), cfg, prefix=prefix)
    return cfg, tree, hf_config


def init_projector(vision_width: int, llm_width: int, seed: int = PROJECTOR_SEED) -> dict:
    """The reference's projector init: torch.manual_seed(seed), then Linear(vision, llm) and Linear(llm, llm) with
    PyTorch's default init, so the same seed gives the reference's initial projector bit for bit. Without torch, the
    same distribution (weights and biases uniform in +-1/sqrt(fan_in)) from numpy."""
    try:
        import torch
    except ImportError:
        rng = np.random.default_rng(seed)
        bound = lambda n_in, shape: (rng.uniform(-1, 1, shape) / math.sqrt(n_in)).astype(np.float32)
        layer = lambda n_in, n_out: {"kernel": bound(n_in, (n_in, n_out)), "bias": bound(n_in, (n_out,))}
        return {"fc1": layer(vision_width, llm_width), "fc2": layer(llm_width, llm_width)}
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        fc1 = torch.nn.Linear(vision_width, llm_width)
        fc2 = torch.nn.Linear(llm_width, llm_width)
    state = {"0.weight": fc1.weight, "0.bias": fc1.bias, "2.weight": fc2.weight, "2.bias": fc2.bias}
    return hf.projector_from_torch(lambda name: state[name].detach().numpy().copy(), prefix="")


def check_projector(tree: dict, cfg: VLMConfig, where: str) -> dict:
    d_in, d = cfg.vision.width, cfg.llm.hidden_size
    for path, shape in (("fc1/kernel", (d_in, d)), ("fc1/bias", (d,)), ("fc2/kernel", (d, d)), ("fc2/bias", (d,))):
        hf.check_shape(f"{where} projector {path}", hf.get_path(tree, path), shape)
    return tree


def import_sources(llm_dir: str, vision_src: str, *, tokens_per_image: int, projector_seed: int = PROJECTOR_SEED,
                   vision_overrides: dict | None = None, dtype=np.float32) -> Imported:
    from oq2vl_jax.storage import local_copy, paths as storage  # weights in a bucket: read from a local copy

    llm_dir = local_copy.local_dir(llm_dir)
    if storage.is_remote(vision_src):
        vision_src = (local_copy.local_dir if storage.isdir(vision_src) else local_copy.local_file)(vision_src)
    llm_cfg, llm, llm_hf_config = load_llm(llm_dir, dtype)
    vision_cfg, vision, extra, kind = load_vision(vision_src, overrides=vision_overrides, dtype=dtype)
    config = VLMConfig(vision=vision_cfg, llm=llm_cfg, tokens_per_image=tokens_per_image)
    config.validate()
    projector = init_projector(vision_cfg.width, llm_cfg.hidden_size, projector_seed)
    params = {"vision": vision, "projector": cast_tree(projector, dtype), "llm": llm}
    return Imported(config, params, extra, [f"llm: HF Qwen2 from {llm_dir}", f"vision: {kind} from {vision_src}",
                                            f"projector: fresh (torch default init, seed {projector_seed})"],
                    llm_hf_config)


def import_pretrained(llm_dir: str, vision_src: str, *, tokens_per_image: int, projector_seed: int = PROJECTOR_SEED,
                      vision_overrides: dict | None = None) -> tuple[VLMConfig, dict]:
    """Initial weights for training: (model config read from the sources, float32 numpy parameter tree)."""
    imported = import_sources(llm_dir, vision_src, tokens_per_image=tokens_per_image, projector_seed=projector_seed,
                              vision_overrides=vision_overrides)
    return imported.config, imported.params


def cast_tree(tree: dict, dtype) -> dict:
    """Casts every floating leaf of a nested dict of numpy arrays."""
    out = {}
    for key, value in tree.items():
        if isinstance(value, dict):
            out[key] = cast_tree(value, dtype)
        else:
            value = np.asarray(value)
            out[key] = value.astype(dtype, copy=False) if dtype is not None and tensor_files.is_float(value.dtype) else value
    return out
