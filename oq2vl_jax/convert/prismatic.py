"""The reference's own run-directory format (docs/reference_notes.md §9), both ways.

  DIR/config.json                      {"model": {model_id, vision_backbone_id, llm_backbone_id, arch_specifier,
                                        image_resize_strategy, llm_max_length}, "mount_path": "Qwen"}
  DIR/checkpoints/latest-checkpoint.pt torch.save({"model": {"projector": {mlp_projector.{0,2}.{weight,bias}},
                                        "llm_backbone": {llm.model.*, llm.lm_head.weight},
                                        ["vision_backbone": {featurizer.<timm names>}]}})

The reference loads the LLM config and tokenizer from the hub (mount_path + llm_backbone_id) and the vision tower
from timm, so a released directory alone does not say every size. Our exports add `oq2vl_jax.json` (the exact model
config) and `tokenizer/`, which `prismatic.load` ignores and our import uses; for released directories the LLM config
comes from `--llm DIR` or the known backbone ids, and the vision tower from the file or `--vision`.
"""

from __future__ import annotations

import json
import os
import re
import shutil

import numpy as np

from oq2vl_jax.pretrained import hf, importer, tensor_files, timm
from oq2vl_jax.errors import UserError
from oq2vl_jax.models.presets import LLM_PRESETS, VISION_PRESETS, Qwen2Config, VLMConfig

CHECKPOINT = os.path.join("checkpoints", "latest-checkpoint.pt")
OUR_CONFIG = "oq2vl_jax.json"
VISION_BACKBONE_ID = "siglip-vit-so400m-384px"
LLM_BACKBONE_IDS = {"qwen2.5-0.5b": "qwen2.5-0.5b-instruct", "qwen2.5-1.5b": "qwen2.5-1.5b-instruct",
                    "qwen2.5-3b": "qwen2.5-3b-instruct", "qwen2.5-7b": "qwen2.5-7b-instruct"}
LLM_PREFIX = "llm."  # inside "llm_backbone"
VISION_PREFIX = "featurizer."  # inside "vision_backbone"
DEFAULT_MODEL_ID = "open-qwen2vl-oq2vl-jax"


def arch_specifier(tokens_per_image: int) -> str:
    """The reference's projector spec: "+avgpool" means 144 tokens, "+{N}-avgpool" N tokens."""
    return "no-align+avgpool" if tokens_per_image == 144 else f"full-align+{tokens_per_image}-avgpool"


def tokens_from_arch(arch: str) -> int:
    match = re.search(r"\+(?:(\d+)-)?avgpool$", arch)
    if not match:
        raise UserError(f"arch_specifier '{arch}' is not an average-pool projector ('...+avgpool' or "
                        "'...+N-avgpool'); only Open-Qwen2VL's projector is supported")
    return int(match.group(1) or 144)


def llm_backbone_id(cfg: Qwen2Config) -> str | None:
    for name, preset in LLM_PRESETS.items():
        if name in LLM_BACKBONE_IDS and preset == cfg:
            return LLM_BACKBONE_IDS[name]
    return None


def _torch_tensor(array: np.ndarray, dtype):
    """A contiguous torch tensor of `array` cast to `dtype` (np.float32 or ml_dtypes.bfloat16)."""
    import ml_dtypes
    import torch

    array = np.asarray(array)
    if dtype is not None and np.dtype(dtype) == np.dtype(ml_dtypes.bfloat16):
        if array.dtype != np.dtype(ml_dtypes.bfloat16):
            return torch.from_numpy(np.ascontiguousarray(array, np.float32)).to(torch.bfloat16)
        return torch.from_numpy(np.ascontiguousarray(array).view(np.int16)).view(torch.bfloat16)
    if dtype is not None:
        array = array.astype(dtype, copy=False)
    array = np.ascontiguousarray(array)
    return torch.from_numpy(array if array.flags.writeable else array.copy())


def _state_dict(tensors, dtype) -> dict:
    return {name: _torch_tensor(array, dtype) for name, array in tensors}


def export(out_dir: str, config: VLMConfig, params: dict, vision_extra: dict | None, *, dtype, with_vision: bool,
           tokenizer_dir: str | None, llm_hf_config: dict | None = None, model_id: str = DEFAULT_MODEL_ID,
           mount_path: str = "Qwen") -> list[str]:
    """Writes a directory `prismatic.load` reads. Consumes `params` (arrays are dropped as they are written).

    `mount_path` is where `prismatic.load` looks for the LLM config and tokenizer ({mount_path}/{LLM name}): "Qwen"
    (the hub organisation) by default, a local directory for offline use."""
    import torch

    lines = []
    if with_vision and not (vision_extra or {}).get("blocks") and config.vision.num_blocks_run < config.vision.depth:
        raise UserError("--with-vision needs the vision blocks after the feature layer, the final norm and the MAP "
                        "head (the reference loads the complete timm tower strictly); this checkpoint has no "
                        "vision_extra: pass --vision SRC (the SigLIP weights the run started from)")
    if with_vision and not {"norm", "head"} <= set(vision_extra or {}):
        raise UserError("--with-vision needs the tower's final norm and MAP head, which neither the checkpoint nor "
                        "--vision provided; the reference's strict load of the timm tower would fail")
    llm_id = llm_backbone_id(config.llm)
    if llm_id is None:
        llm_id = LLM_BACKBONE_IDS["qwen2.5-1.5b"]
        lines.append(f"warning: the LLM is not a Qwen2.5 preset size; llm_backbone_id set to '{llm_id}' anyway")
    if config.vision != VISION_PRESETS["siglip-so400m-384"] and with_vision:
        lines.append("warning: the vision tower is not SigLIP So400m/14@384 but vision_backbone_id says it is")
    os.makedirs(os.path.join(out_dir, "checkpoints"), exist_ok=True)
    model = {}
    if with_vision:
        model["vision_backbone"] = _state_dict(timm.vision_to_timm(params.pop("vision"), vision_extra, VISION_PREFIX),
                                               dtype)
    model["projector"] = _state_dict(hf.projector_to_torch(params.pop("projector"), prefix="mlp_projector."), dtype)
    tied, head = config.llm.tie_word_embeddings, LLM_PREFIX + "lm_head.weight"
    llm = _state_dict(hf.qwen2_to_hf(params.pop("llm"), config.llm, prefix=LLM_PREFIX + "model.",
                                     lm_head=None if tied else head, consume=True), dtype)
    if tied:  # one tensor under both names, as the reference's state_dict() has it
        llm[head] = llm[LLM_PREFIX + "model.embed_tokens.weight"]
    model["llm_backbone"] = llm
    torch.save({"model": model}, os.path.join(out_dir, CHECKPOINT))
    del model
    run_config = {"model": {"model_id": model_id, "vision_backbone_id": VISION_BACKBONE_ID, "llm_backbone_id": llm_id,
                            "arch_specifier": arch_specifier(config.tokens_per_image),
                            "image_resize_strategy": "resize-naive", "llm_max_length": 4096},
                  "mount_path": mount_path}
    with open(os.path.join(out_dir, "config.json"), "w") as f:
        json.dump(run_config, f, indent=2)
    with open(os.path.join(out_dir, OUR_CONFIG), "w") as f:
        json.dump({"model_config": config.to_dict(), "llm_hf_config": llm_hf_config}, f, indent=2)
    if tokenizer_dir is not None:
        shutil.copytree(tokenizer_dir, os.path.join(out_dir, "tokenizer"), dirs_exist_ok=True)
    lines.append(f"prismatic: arch_specifier {run_config['model']['arch_specifier']}, llm_backbone_id {llm_id}, "
                 f"modules {', '.join(['vision_backbone'] if with_vision else [])}"
                 f"{', ' if with_vision else ''}projector, llm_backbone")
    return lines


def _vlm_config(directory: str, run: dict, source: tensor_files.TensorSource, llm_dir: str | None) -> tuple[VLMConfig | None,
                                                                                                   Qwen2Config, dict | None]:
    """(our exported config if present, LLM config, LLM config.json if known)."""
    ours_path = os.path.join(directory, OUR_CONFIG)
    if os.path.isfile(ours_path):
        ours = tensor_files.read_json(ours_path)
        config = VLMConfig.from_dict(ours["model_config"])
        return config, config.llm, ours.get("llm_hf_config")
    if llm_dir is not None:
        hf_config = tensor_files.read_json(os.path.join(llm_dir, "config.json"), "LLM config")
        return None, hf.qwen2_config_from_hf(hf_config, os.path.join(llm_dir, "config.json")), hf_config
    llm_id = run["model"].get("llm_backbone_id")
    for preset, backbone in LLM_BACKBONE_IDS.items():
        if backbone == llm_id:
            return None, LLM_PRESETS[preset], None
    raise UserError(f"'{directory}': unknown llm_backbone_id '{llm_id}'; pass --llm DIR (an HF directory with the "
                    "LLM's config.json)")


def read(directory: str, *, vision_src: str | None = None, llm_dir: str | None = None, dtype=np.float32,
         ) -> importer.Imported:
    config_path, ckpt_path = os.path.join(directory, "config.json"), os.path.join(directory, CHECKPOINT)
    run = tensor_files.read_json(config_path, "prismatic run config")
    if "model" not in run or "arch_specifier" not in run["model"]:
        raise UserError(f"'{config_path}' has no model.arch_specifier: not a prismatic run directory")
    tokens = tokens_from_arch(run["model"]["arch_specifier"])
    if not os.path.isfile(ckpt_path):
        raise UserError(f"'{directory}' has no {CHECKPOINT}")
    source = tensor_files.open_torch(ckpt_path)
    for module in ("projector", "llm_backbone"):
        if not any(n.startswith(f"model.{module}.") for n in source.names):
            raise UserError(f"'{ckpt_path}' has no '{module}' state dict (the reference requires it)")
    ours, llm_cfg, llm_hf_config = _vlm_config(directory, run, source, llm_dir)
    llm_get = source.getter(f"model.llm_backbone.{LLM_PREFIX}", dtype)
    try:
        llm = hf.qwen2_from_hf(llm_get, llm_cfg, prefix="model.")
    except UserError as e:
        if ours is None and llm_dir is None:  # sizes were guessed from llm_backbone_id
            raise UserError(f"{e} (sizes taken from llm_backbone_id '{run['model'].get('llm_backbone_id')}'; "
                            "pass --llm DIR with the LLM's config.json)") from e
        raise
    if llm_cfg.tie_word_embeddings and not np.array_equal(llm_get("lm_head.weight"), llm["embed"]):
        raise UserError(f"'{ckpt_path}': lm_head differs from embed_tokens but the LLM config ties them")
    description = [f"llm, projector: prismatic checkpoint {ckpt_path}"]
    if any(n.startswith("model.vision_backbone.") for n in source.names):
        overrides = None
        if ours is not None:
            overrides = {k: getattr(ours.vision, k) for k in importer.VISION_OVERRIDABLE}
        vision_cfg, vision, extra, _ = importer.vision_from_source(source, overrides=overrides, dtype=dtype)
        description.append("vision: timm weights in the same checkpoint")
    elif vision_src is not None:
        overrides = {k: getattr(ours.vision, k) for k in importer.VISION_OVERRIDABLE} if ours else None
        vision_cfg, vision, extra, kind = importer.load_vision(vision_src, overrides=overrides, dtype=dtype)
        description.append(f"vision: {kind} from {vision_src}")
    else:
        raise UserError(f"'{ckpt_path}' has no vision_backbone (the reference saves it only in full-* stages); pass "
                        "--vision SRC with the SigLIP weights the run used")
    config = VLMConfig(vision=vision_cfg, llm=llm_cfg, tokens_per_image=tokens)
    config.validate()
    projector = importer.check_projector(
        hf.projector_from_torch(source.getter("model.projector.", dtype), prefix="mlp_projector."), config, ckpt_path)
    params = {"vision": vision, "projector": projector, "llm": llm}
    from oq2vl_jax.text import contract as contract_lib
    # the original's SFT documents went through its dropping tokenizer_image_token (text/contract.py ORIGINAL)
    return importer.Imported(config, params, extra, description, llm_hf_config, contract_lib.ORIGINAL)


def tokenizer_dir(directory: str) -> str | None:
    path = os.path.join(directory, "tokenizer")
    return path if os.path.isdir(path) else None
