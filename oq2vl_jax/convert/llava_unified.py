"""LLaVA-Unified `llava_qwen` checkpoints (the released MLM-Filter models, e.g. `weizhiwang/mlm-filter-qwen2.5-1.5b-
gpt4o`) -> our VLM. Import only.

What LLaVA-Unified (github.com/Victorwz/LLaVA-Unified) builds from such a directory, and so what is read here:

- `llava/model/language_model/llava_qwen.py` `LlavaQwenForCausalLM`: a Qwen2ForCausalLM (`model.embed_tokens`,
  `model.layers.*`, `model.norm`, `lm_head`, tied when config says so; `rope_scaling` forced to None) whose `model`
  also holds, from `llava/model/llava_arch.py` `LlavaMetaModel`:
  - `mm_projector` (`llava/model/multimodal_projector/builder.py`), one of
    - `mlp2x_gelu`: Linear(mm_hidden_size, hidden) -> nn.GELU() (exact) -> Linear(hidden, hidden) on every patch,
      tensors `model.mm_projector.{0,2}.*` = our projector fc1 / fc2 with identity pooling (729 tokens);
    - `aapool_mlp` (`AvgPoolProjector`, what LLaVA-Unified's `scripts/mlm_filter/finetune.sh` trains the Qwen2.5
      MLM-Filter with): AdaptiveAvgPool2d of the patch grid to sqrt(mm_num_image_tokens) squared, then the same
      Linear -> GELU -> Linear, tensors `model.mm_projector.mlp_projector.{0,2}.*`: our projector exactly (the
      reference's projector is the same module), tokens_per_image = mm_num_image_tokens (144 in that script);
  - `vision_tower` (`llava/model/multimodal_encoder/siglip_encoder.py` `SiglipVisionTower`, chosen for any
    `mm_vision_tower` naming "siglip"): the complete transformers SiglipVisionModel, tensors
    `model.vision_tower.vision_tower.vision_model.*`. Features for `mm_vision_select_feature` "patch" are
    `hidden_states[mm_vision_select_layer]` (-1 in the MLM-Filter script: the last block's output, -2 the one
    before; never the post-layernorm or the head) over the 27 x 27 patches of a 384 px image, projected and spliced
    where the prompt's one image placeholder stands (`IMAGE_TOKEN_INDEX` -200, not a vocabulary token), as our
    prompt layout places the image's tokens.
- Tower weights: `llava/model/builder.py` `load_pretrained_model` calls the tower's `load_model()`, which loads
  `mm_vision_tower` (the hub's SigLIP) itself; the copy in the checkpoint is only used with
  `unfreeze_mm_vision_tower`. With the tower frozen in training (MLM-Filter's recipe) both are the same tensors, so
  the checkpoint's copy is read unless `vision_src` (that SigLIP, as `--vision`) is given (refused for a trained
  tower, whose copy upstream runs).
- config.json holds no tower config (only `mm_hidden_size`): sizes are read off the weights, the heads from the known
  SigLIP widths (or `num_heads` in `vision_overrides`), GELU tanh and 1e-6 LayerNorm eps as SigLIP's config.
- Images: MLM_Filter's scoring scripts call the tower's SiglipImageProcessor directly (PIL bicubic squash to 384,
  rescale 1/255, mean = std = 0.5), not `llava/mm_utils.py` `process_images`, so `image_aspect_ratio` "pad"
  (`expand2square`) is not applied when scoring; our inference preprocessing is that squash.

Anything else LLaVA-Unified can express (other projectors, `cls_patch` features, `anyres*` tiling, `spatial*`
patch merging with `image_newline`, image start/end tokens, S2, other towers) is refused with one line naming it.
"""

from __future__ import annotations

import math
import os
import re
import tempfile

import numpy as np

from oq2vl_jax.convert.llava import feature_layer_from_llava
from oq2vl_jax.errors import UserError
from oq2vl_jax.models.presets import VLMConfig
from oq2vl_jax.pretrained import hf, importer, tensor_files
from oq2vl_jax.text import tokenizer_files as tokenizer

MODEL_TYPE = "llava_qwen"
LLM_PREFIX = "model."
PROJECTOR_PREFIX = {"mlp2x_gelu": "model.mm_projector.", "aapool_mlp": "model.mm_projector.mlp_projector."}
TOWER_PREFIX = "model.vision_tower.vision_tower."  # + SiglipVisionModel's own names (vision_model.*)
# setting -> (LLaVA-Unified's value when config.json lacks it, the values we represent)
SETTINGS = {
    "mm_projector_type": ("linear", ("mlp2x_gelu", "aapool_mlp")),
    "mm_vision_select_feature": ("patch", ("patch",)),
    "mm_patch_merge_type": ("flat", ("flat",)),
    "image_aspect_ratio": (None, (None, "square", "pad")),
    "mm_use_im_start_end": (False, (False,)),
    "s2": (False, (False,)),
}
# config.json keys LLaVA-Unified adds to the Qwen2 config (dropped from the LLM config kept for exports)
LLAVA_KEYS = ("architectures", "model_type", "image_aspect_ratio", "image_grid_pinpoints", "tokenizer_padding_side",
              "tokenizer_model_max_length", "tune_mm_mlp_adapter", "freeze_mm_mlp_adapter", "unfreeze_mm_vision_tower",
              "use_mm_proj", "s2", "s2_scales", "rope_scaling")
# SiglipVisionConfig's defaults for what the weights cannot tell (transformers' and google/siglip-so400m-patch14-384's)
TOWER_ACT, TOWER_EPS = "gelu_pytorch_tanh", 1e-6


def check_settings(d: dict, config_path: str) -> int:
    """Refuses what our VLM does not represent; returns mm_vision_select_layer (LLaVA's hidden_states index)."""
    if d.get("model_type") != MODEL_TYPE:
        raise UserError(f"'{config_path}': model_type {d.get('model_type')!r} is not '{MODEL_TYPE}' (LLaVA-Unified's "
                        "LlavaQwenForCausalLM)")
    if "vision_tower_pretrained" in d:  # LLaVA-NeXT's initialize_vision_modules always writes it; LLaVA-Unified never
        raise UserError(f"'{config_path}': vision_tower_pretrained marks a LLaVA-NeXT checkpoint, which is not "
                        "supported (its SigLIP tower drops the last block and ignores mm_vision_select_layer); "
                        "LLaVA-Unified only")
    tower = d.get("mm_vision_tower")
    if not isinstance(tower, str) or "siglip" not in tower.lower() or "naflex" in tower.lower():
        raise UserError(f"'{config_path}': mm_vision_tower {tower!r} is not supported (a SigLIP tower only)")
    for key, (default, allowed) in SETTINGS.items():
        value = d.get(key, default)  # absent means LLaVA-Unified's default
        if value not in allowed:
            raise UserError(f"'{config_path}': {key}={value!r}{'' if key in d else ' (its default)'} is not "
                            f"supported (supported: {', '.join(repr(a) for a in allowed)})")
    if d["mm_projector_type"] == "aapool_mlp":
        tokens = d.get("mm_num_image_tokens")
        side = math.isqrt(tokens) if isinstance(tokens, int) and not isinstance(tokens, bool) and tokens > 0 else 0
        if side * side != tokens:
            raise UserError(f"'{config_path}': mm_num_image_tokens={tokens!r} is not supported with aapool_mlp (a "
                            "square n*n: AdaptiveAvgPool2d to n x n)")
    if "mm_vision_select_layer" not in d:
        raise UserError(f"'{config_path}' has no mm_vision_select_layer")
    return d["mm_vision_select_layer"]


def tower_config_from_weights(tower: tensor_files.TensorSource, num_heads: int | None) -> dict:
    """A SiglipVisionConfig dict for HF SigLIP vision weights without their config.json."""
    prefix = hf.hf_vision_prefix(tower)
    patch = np.shape(tower.get(prefix + "embeddings.patch_embedding.weight"))  # [D, 3, p, p]
    positions = np.shape(tower.get(prefix + "embeddings.position_embedding.weight"))[0]
    layers = {int(m[1]) for n in tower.names if (m := re.match(re.escape(prefix) + r"encoder\.layers\.(\d+)\.", n))}
    width, grid = int(patch[0]), math.isqrt(positions)
    if grid * grid != positions:
        raise UserError(f"{tower.where}: {positions} vision position embeddings are not a square grid")
    heads = num_heads or hf.KNOWN_NUM_HEADS.get(width)
    if heads is None:
        raise UserError(f"{tower.where}: a SigLIP tower of width {width} has no known head count; pass "
                        "--vision-heads N (or --vision DIR, the tower mm_vision_tower names)")
    return {"hidden_size": width, "num_hidden_layers": max(layers, default=-1) + 1,
            "intermediate_size": int(np.shape(tower.get(prefix + "encoder.layers.0.mlp.fc1.weight"))[0]),
            "num_attention_heads": heads, "patch_size": int(patch[-1]),
            "image_size": hf.siglip_image_size(int(patch[-1]), grid), "hidden_act": TOWER_ACT,
            "layer_norm_eps": TOWER_EPS}


def read(directory: str, *, vision_src: str | None = None, vision_overrides: dict | None = None,
         dtype=np.float32) -> tuple[importer.Imported, str | None]:
    """(imported weights, a temporary copy of the directory's tokenizer files or None when it has no tokenizer.json);
    the caller removes the copy."""
    config_path = os.path.join(directory, "config.json")
    d = tensor_files.read_json(config_path, "LLaVA-Unified config")
    layer = check_settings(d, config_path)
    overrides = dict(vision_overrides or {})
    if "feature_layer" in overrides:
        raise UserError("--feature-layer does not apply to --from llava-unified: the checkpoint's "
                        "mm_vision_select_layer says which block's output the model was trained on")
    overrides["feature_layer"] = feature_layer_from_llava(layer, f"'{config_path}': mm_vision_select_layer")
    # LlavaQwenForCausalLM is a Qwen2ForCausalLM with rope_scaling forced to None.
    llm_cfg = hf.qwen2_config_from_hf({**d, "model_type": "qwen2", "rope_scaling": None}, config_path)
    source = tensor_files.open_hf_weights(directory)
    projector_type = d["mm_projector_type"]
    projector_prefix = PROJECTOR_PREFIX[projector_type]
    if projector_prefix + "0.weight" not in source:
        raise UserError(f"{source.where} has no '{projector_prefix}0.weight' (mm_projector_type {projector_type}): "
                        "not a LLaVA-Unified checkpoint of that projector")
    tower = source.under(TOWER_PREFIX)
    if vision_src is not None and d.get("unfreeze_mm_vision_tower") and tower.names:
        raise UserError(f"'{config_path}': unfreeze_mm_vision_tower=true: the tower was trained and LLaVA-Unified "
                        "runs the checkpoint's copy; drop --vision")
    if vision_src is not None:
        vision_cfg, vision, extra, kind = importer.load_vision(vision_src, overrides=overrides, dtype=dtype)
        vision_from = f"vision: {kind} from {vision_src} (as LLaVA-Unified's load_model loads mm_vision_tower)"
    else:
        if not tower.names:
            raise UserError(f"{source.where} holds no vision tower ('{TOWER_PREFIX}*'); pass --vision DIR with the "
                            f"SigLIP tower mm_vision_tower names ({d['mm_vision_tower']})")
        hf_config = tower_config_from_weights(tower, overrides.get("num_heads"))
        vision_cfg, vision, extra, _ = importer.vision_from_source(tower, overrides=overrides, dtype=dtype,
                                                                   hf_config=hf_config)
        vision_from = f"vision: SigLIP in the checkpoint ({d['mm_vision_tower']}, heads {vision_cfg.num_heads})"
    if d.get("mm_hidden_size", vision_cfg.width) != vision_cfg.width:
        raise UserError(f"'{config_path}': mm_hidden_size {d['mm_hidden_size']} != the vision tower's width "
                        f"{vision_cfg.width}")
    tokens = vision_cfg.num_patches
    if projector_type == "aapool_mlp":
        tokens = d["mm_num_image_tokens"]
        if math.isqrt(tokens) > vision_cfg.grid:
            raise UserError(f"'{config_path}': mm_num_image_tokens={tokens} pools to more than the tower's "
                            f"{vision_cfg.grid}x{vision_cfg.grid} patch grid")
    config = VLMConfig(vision=vision_cfg, llm=llm_cfg, tokens_per_image=tokens)
    config.validate()
    get = source.getter("", dtype)
    llm = hf.qwen2_from_hf(get, llm_cfg, prefix=LLM_PREFIX, lm_head="lm_head.weight")
    projector = importer.check_projector(hf.projector_from_torch(get, prefix=projector_prefix), config, directory)
    description = [f"llava-unified {directory}: llm, projector ({projector_type}); image features from "
                   f"hidden_states[{layer}], {config.tokens_per_image} tokens per image", vision_from]
    if d.get("image_aspect_ratio") == "pad":
        description.append("note: image_aspect_ratio 'pad' is not applied, as in MLM_Filter's scoring scripts "
                           "(they call the SigLIP image processor directly: bicubic squash)")
    tok_dir = None
    if os.path.isfile(os.path.join(directory, "tokenizer.json")):
        tok_dir = tempfile.mkdtemp(prefix="oq2vl_llava_unified_tok_")
        tokenizer.copy_files(directory, tok_dir)
    llm_hf_config = {k: v for k, v in d.items() if k not in LLAVA_KEYS and not k.startswith("mm_")}
    return importer.Imported(config, {"vision": vision, "projector": projector, "llm": llm}, extra, description,
                             llm_hf_config), tok_dir
