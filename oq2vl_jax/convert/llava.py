"""Hugging Face LLaVA directories (`LlavaForConditionalGeneration` + `LlavaProcessor`), both ways.

The export loads in transformers with no custom code: SigLIP vision tower, `vision_feature_layer` = our feature layer
(-2: the second-to-last block, no final norm), `vision_feature_select_strategy="full"` (every patch), a
Linear -> GELU (exact) -> Linear projector = our fc1 / fc2, the Qwen2 LLM. LLaVA has no pooling, so only models whose
tokens_per_image equals the patch count (729 for So400m/14@384, the SFT model) fit. The processor resizes to the
tower's image size with PIL bicubic and normalises with mean = std = 0.5 (the reference's preprocessing; with
torchvision installed pass `backend="pil"` to AutoProcessor to keep PIL's resize), and its chat template writes the
checkpoint's prompt contract (convert/chat_template.py; config.json records it under CONTRACT_KEY).

Key names (transformers 5): model.vision_tower.*, model.multi_modal_projector.linear_{1,2}.*,
model.language_model.*, lm_head.weight; transformers 4 names (vision_tower.vision_model.*, multi_modal_projector.*,
language_model.model.*, language_model.lm_head.weight) are read too.
"""

from __future__ import annotations

import dataclasses
import os
import tempfile

import numpy as np

from oq2vl_jax.errors import UserError
from oq2vl_jax.models.presets import VLMConfig
from oq2vl_jax.pretrained import hf, importer, tensor_files
from oq2vl_jax.text import tokenizer_files as tokenizer, tokens
from oq2vl_jax.text.contract import PromptContract, TRAINED_DEFAULT

# config.json key recording the exported checkpoint's prompt contract (text/contract.py); read back on import
CONTRACT_KEY = "oq2vl_prompt_contract"

# LLaVA-style servers (SGLang's generic llava, LLaVA's `process_images`) pad to a square for "pad" and tile for
# "anyres*"; any other value means the image processor's own resize, which is ours (squash to the tower's size).
IMAGE_ASPECT_RATIO = "square"
STOP_TOKENS = (tokens.EOS_TOKEN, tokens.PAD_TOKEN)  # what our sampler stops on (oq2vl_jax/inference/api.py)

V5 = {"vision": "model.vision_tower.", "projector": "model.multi_modal_projector.", "llm": "model.language_model.",
      "lm_head": "lm_head.weight"}
V4 = {"vision": "vision_tower.vision_model.", "projector": "multi_modal_projector.", "llm": "language_model.model.",
      "lm_head": "language_model.lm_head.weight"}


def feature_layer_to_llava(cfg) -> int:
    """Our block index from the end -> LLaVA's index into hidden_states (embeddings first, then each block)."""
    return cfg.num_blocks_run - 1 - cfg.depth


def feature_layer_from_llava(layer, what: str) -> int:
    """LLaVA's index into the tower's hidden_states (0 = the embeddings, i = block i's output, negative from the
    end) -> our feature_layer (a block index, negative from the end). `what` names the setting in the error."""
    if isinstance(layer, bool) or not isinstance(layer, int) or layer == 0:
        raise UserError(f"{what} {layer!r} is not supported (one block's output: a nonzero integer)")
    return layer if layer < 0 else layer - 1


def check_exportable(config: VLMConfig) -> None:
    if config.tokens_per_image != config.vision.num_patches:
        raise UserError(
            f"hf-llava holds only models that give every patch to the LLM (tokens_per_image == "
            f"{config.vision.num_patches}); this checkpoint pools to {config.tokens_per_image} tokens and LLaVA has "
            f"no pooling. Export --to prismatic instead, or re-import with --pool {config.vision.num_patches} "
            "after SFT")


def _zero_blocks(config: VLMConfig, like: dict) -> dict:
    count = config.vision.depth - config.vision.num_blocks_run
    return {name: {k: np.zeros((count,) + np.shape(v)[1:], np.asarray(v).dtype) for k, v in part.items()}
            for name, part in like.items()}


def _tensors(config: VLMConfig, params: dict, extra: dict):
    cfg = config
    yield from hf.siglip_to_hf(params["vision"], prefix=V5["vision"], extra=extra)
    if "norm" not in extra:  # SiglipVisionTransformer always has post_layernorm (unused by LLaVA); identity values
        d = cfg.vision.width
        yield V5["vision"] + "post_layernorm.weight", np.ones(d, np.float32)
        yield V5["vision"] + "post_layernorm.bias", np.zeros(d, np.float32)
    for ours, theirs in (("fc1", "linear_1"), ("fc2", "linear_2")):
        yield from hf.dense_to_hf(params["projector"][ours], V5["projector"] + theirs)
    yield from hf.qwen2_to_hf(params["llm"], cfg.llm, prefix=V5["llm"],
                              lm_head=None if cfg.llm.tie_word_embeddings else V5["lm_head"], consume=True)


def export(out_dir: str, config: VLMConfig, params: dict, vision_extra: dict | None, *, dtype, tokenizer_dir: str,
           llm_hf_config: dict | None = None, contract: PromptContract = TRAINED_DEFAULT) -> list[str]:
    """Writes the hf-llava directory; its chat template renders `contract` (convert/chat_template.py)."""
    import transformers

    from oq2vl_jax.convert.chat_template import chat_template

    check_exportable(config)
    if tokenizer_dir is None:
        raise UserError("hf-llava export needs the checkpoint's tokenizer (CKPT/tokenizer), which is missing")
    lines = []
    extra = dict(vision_extra or {})
    if config.vision.depth > config.vision.num_blocks_run and "blocks" not in extra:
        extra["blocks"] = _zero_blocks(config, params["vision"]["blocks"])
        lines.append("warning: vision blocks after the feature layer are not in the checkpoint; written as zeros "
                     "(LLaVA never uses their output; pass --vision SRC to write the real ones)")
    tok = tokens.open_tokenizer(tokenizer_dir)
    tokens.add_reference_tokens(tok)  # the chat template writes <s>: a checkpoint saved with a bare tokenizer too
    image_id = tokenizer.add_image_token(tok, config.llm.vocab_size, tokenizer_dir)
    vision_cfg = hf.siglip_config_to_hf(config.vision, use_head="head" in extra)
    text_cfg = hf.qwen2_config_to_hf(config.llm, llm_hf_config)
    llava_cfg = transformers.LlavaConfig(
        vision_config=transformers.SiglipVisionConfig(**vision_cfg),
        text_config=transformers.Qwen2Config(**text_cfg), image_token_index=image_id,
        image_seq_length=config.tokens_per_image, projector_hidden_act="gelu",
        vision_feature_select_strategy="full", vision_feature_layer=feature_layer_to_llava(config.vision),
        multimodal_projector_bias=True, tie_word_embeddings=config.llm.tie_word_embeddings,
        pad_token_id=tok.pad_token_id)
    llava_cfg.architectures = ["LlavaForConditionalGeneration"]
    llava_cfg.image_aspect_ratio = IMAGE_ASPECT_RATIO  # read by SGLang / LLaVA-style loaders; transformers ignores it
    setattr(llava_cfg, CONTRACT_KEY, contract.to_dict())  # kept in config.json; read back by `convert import`
    os.makedirs(out_dir, exist_ok=True)
    files = tensor_files.write_safetensors(out_dir, _tensors(config, params, extra), dtype=dtype)
    llava_cfg.dtype = "bfloat16" if np.dtype(dtype).itemsize == 2 else "float32"
    llava_cfg.save_pretrained(out_dir)
    size = config.vision.image_size
    image_processor = transformers.SiglipImageProcessorPil(
        size={"height": size, "width": size}, resample=3, image_mean=[0.5] * 3, image_std=[0.5] * 3,
        do_resize=True, do_rescale=True, do_normalize=True, do_convert_rgb=True)
    processor = transformers.LlavaProcessor(
        image_processor=image_processor, tokenizer=tok, patch_size=config.vision.patch_size,
        vision_feature_select_strategy="full", chat_template=chat_template(contract), image_token=tokens.IMAGE_TOKEN,
        num_additional_image_tokens=0)
    processor.save_pretrained(out_dir)
    stop_ids = [tok.convert_tokens_to_ids(t) for t in STOP_TOKENS if t in tok.get_vocab()]
    transformers.GenerationConfig(bos_token_id=tok.convert_tokens_to_ids("<s>"), eos_token_id=stop_ids,
                                  pad_token_id=tok.pad_token_id, do_sample=False).save_pretrained(out_dir)
    lines.extend([f"hf-llava: {len(files)} weight file(s), <image> id {image_id}, {config.tokens_per_image} image "
                 f"tokens, vision_feature_layer {feature_layer_to_llava(config.vision)}, vision hidden_act "
                 f"{vision_cfg['hidden_act']}", f"chat template: {contract.describe()}"])
    return lines


def _layout(source: tensor_files.TensorSource) -> dict:
    for names in (V5, V4):
        if names["projector"] + "linear_1.weight" in source:
            return names
    raise UserError(f"{source.where}: no 'multi_modal_projector.linear_1.weight'; not a LLaVA checkpoint")


def read(directory: str, *, dtype=np.float32) -> tuple[importer.Imported, str]:
    """(imported weights, a temporary tokenizer directory without `<image>`); the caller removes the latter."""
    config_path = os.path.join(directory, "config.json")
    d = tensor_files.read_json(config_path, "LLaVA config")
    if d.get("model_type") != "llava":
        raise UserError(f"'{config_path}' has model_type '{d.get('model_type')}', expected 'llava'")
    text = d.get("text_config") or {}
    llm_cfg = hf.qwen2_config_from_hf(text, f"{config_path} text_config")
    if d.get("tie_word_embeddings") or text.get("tie_word_embeddings"):
        llm_cfg = dataclasses.replace(llm_cfg, tie_word_embeddings=True)
    layer = d.get("vision_feature_layer", -2)
    for key, want in (("vision_feature_select_strategy", "full"), ("projector_hidden_act", "gelu"),
                      ("multimodal_projector_bias", True)):
        if d.get(key, want) != want:
            raise UserError(f"'{config_path}': {key}={d.get(key)!r} is not supported (expected {want!r})")
    source = tensor_files.open_hf_weights(directory)
    names = _layout(source)
    vision_cfg, vision, extra, _ = importer.vision_from_source(
        source.under(names["vision"]), dtype=dtype, hf_config=d,
        overrides={"feature_layer": feature_layer_from_llava(layer, f"'{config_path}': vision_feature_layer")})
    config = VLMConfig(vision=vision_cfg, llm=llm_cfg, tokens_per_image=vision_cfg.num_patches)
    config.validate()
    if d.get("image_seq_length", config.tokens_per_image) != config.tokens_per_image:
        raise UserError(f"'{config_path}': image_seq_length {d['image_seq_length']} != the tower's "
                        f"{config.tokens_per_image} patches")
    get = source.getter("", dtype)
    projector = importer.check_projector({
        "fc1": hf.dense_from_hf(get, names["projector"] + "linear_1"),
        "fc2": hf.dense_from_hf(get, names["projector"] + "linear_2")}, config, directory)
    llm = hf.qwen2_from_hf(get, llm_cfg, prefix=names["llm"], lm_head=names["lm_head"])
    tok_dir = tempfile.mkdtemp(prefix="oq2vl_llava_tok_")
    tokenizer.strip_added_token(directory, tok_dir, tokens.IMAGE_TOKEN)
    hf_text = {k: v for k, v in text.items() if k not in ("architectures",)}
    return importer.Imported(config, {"vision": vision, "projector": projector, "llm": llm}, extra,
                             [f"hf-llava {directory}"], hf_text, read_contract(d, config_path)), tok_dir


def read_contract(hf_config: dict, where: str):
    """The prompt contract an export of ours records in config.json (CONTRACT_KEY); any other LLaVA directory is
    taken to be the original's release (text/contract.py ORIGINAL)."""
    from oq2vl_jax.text import contract as contract_lib

    record = hf_config.get(CONTRACT_KEY)
    if record is None:
        return contract_lib.ORIGINAL
    if not isinstance(record, dict):
        raise UserError(f"'{where}': {CONTRACT_KEY} must be an object, got {record!r}")
    return contract_lib.PromptContract.from_dict(record)

