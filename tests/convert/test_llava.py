"""oq2vl_jax -> hf-llava: transformers loads it offline and matches our VLM's logits; and back, bit-exact."""

import os
import shutil

import jax
import numpy as np
import pytest
import torch
import transformers
from PIL import Image

from fixtures.convert import (GRID, assert_trees_equal, hf_llm, hf_vision, imported_ckpt,  # noqa: F401
                              tiny_tokenizer_dir)
from oq2vl_jax import checkpoint_io
from oq2vl_jax.convert import exporter, llava
from oq2vl_jax.convert.chat_template import chat_template
from oq2vl_jax.errors import UserError
from oq2vl_jax.models.params import vlm_from_params
from oq2vl_jax.text import contract as contract_lib, tokens

LOGIT_TOLERANCE = 1e-4


@pytest.fixture(scope="module")
def exported(tmp_path_factory, imported_ckpt):
    out = str(tmp_path_factory.mktemp("llava") / "hf")
    exporter.export(imported_ckpt, "hf-llava", out)
    return out


def test_chat_template_writes_the_checkpoints_contract(exported):
    """The template renders the checkpoint's prompt contract (tests/convert/test_chat_template.py checks the ids
    for every format x label mode x shape): a checkpoint trained here keeps the "\\n" after the image."""
    processor = transformers.AutoProcessor.from_pretrained(exported)
    messages = [{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": "What is it? "}]},
                {"role": "assistant", "content": "A cat."}, {"role": "user", "content": "Sure?"},
                {"role": "assistant", "content": ""}]
    assert processor.apply_chat_template(messages) == (
        "<s><|im_start|>system\nYou are a helpful assistant.<|im_end|>\n"
        "<|im_start|>user\n<image>\nWhat is it?<|im_end|>assistant\nA cat.<|im_end|>\n"
        "<|im_start|>user\nSure?<|im_end|>assistant\n <|im_end|>\n")
    plain = [{"role": "user", "content": "<image>\nDescribe."}]
    assert processor.apply_chat_template(plain).endswith("user\n<image>\nDescribe.<|im_end|>assistant\n")
    # the original's release (reference_compat): its tokenizer dropped the "\n" after the image
    processor.chat_template = chat_template(contract_lib.ORIGINAL)
    assert processor.apply_chat_template(plain).endswith("user\n<image>Describe.<|im_end|>assistant\n")


def test_transformers_logits_match_ours(exported, imported_ckpt):
    model = transformers.LlavaForConditionalGeneration.from_pretrained(exported, attn_implementation="eager").eval()
    processor = transformers.AutoProcessor.from_pretrained(exported)
    assert type(processor.image_processor).__name__ == "SiglipImageProcessorPil"
    image = Image.fromarray(np.random.default_rng(0).integers(0, 256, (45, 37, 3), dtype=np.uint8))
    messages = [{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": "Describe the image."}]}]
    inputs = processor(images=image, text=processor.apply_chat_template(messages), return_tensors="pt")
    with torch.no_grad():
        theirs = model(**inputs).logits[0].float().numpy()

    ids = inputs["input_ids"][0].numpy()
    image_mask = ids == model.config.image_token_index
    assert image_mask.sum() == GRID * GRID and ids[0] == tokens.open_tokenizer(exported).convert_tokens_to_ids("<s>")
    resized = np.asarray(image.convert("RGB").resize((28, 28), Image.BICUBIC), np.uint8)
    assert np.allclose(inputs["pixel_values"][0].permute(1, 2, 0).numpy(), (resized / 255.0 - 0.5) / 0.5, atol=1e-6)
    n = len(ids)
    batch = {"input_ids": np.where(image_mask, 0, ids).astype(np.int32)[None],
             "segment_ids": np.ones((1, n), np.int32), "positions": np.arange(n, dtype=np.int32)[None],
             "image_mask": image_mask[None], "images": resized[None, None], "image_valid": np.ones((1, 1), bool)}
    config, params, _ = checkpoint_io.load_params(imported_ckpt)
    ours = np.asarray(vlm_from_params(config, jax.tree.map(np.asarray, params))(batch))[0]
    assert ours.shape == theirs.shape
    assert np.max(np.abs(ours - theirs)) < LOGIT_TOLERANCE


def test_round_trip_bit_exact(exported, imported_ckpt):
    imported, tok_dir = llava.read(exported)
    try:
        config, params, _ = checkpoint_io.load_params(imported_ckpt)
        assert imported.config == config
        assert_trees_equal(imported.params, params)
        assert_trees_equal(imported.vision_extra, checkpoint_io.load_item(imported_ckpt, checkpoint_io.VISION_EXTRA))
        tok = tokens.open_tokenizer(tok_dir)
        assert tokens.IMAGE_TOKEN not in tok.get_vocab() and len(tok) == 402 and tok.bos_token == "<s>"
    finally:
        shutil.rmtree(tok_dir)


def test_pooled_checkpoint_is_refused(tmp_path, imported_ckpt):
    config, params, _ = checkpoint_io.load_params(imported_ckpt)
    ckpt = str(tmp_path / "pooled")
    checkpoint_io.save_params(ckpt, params, config.replace(tokens_per_image=9),
                              tokenizer_dir=checkpoint_io.tokenizer_path(imported_ckpt))
    with pytest.raises(UserError, match=r"pools to 9 tokens and LLaVA has no pooling.*--to prismatic.*--pool 49"):
        exporter.export(ckpt, "hf-llava", str(tmp_path / "out"))
    assert not os.path.exists(tmp_path / "out")


def test_trainer_steps_without_vision_extra(tmp_path, imported_ckpt, hf_vision):
    """A training step carries no vision_extra: exports take it from the import step of the same run, else from
    --vision, else write zero blocks (unused by LLaVA) and say so."""
    run = str(tmp_path / "run")
    shutil.copytree(imported_ckpt, run)
    config, params, _ = checkpoint_io.load_params(imported_ckpt)
    checkpoint_io.save_params(run, params, config, step=5)
    _, _, extra, _, step = exporter.load_checkpoint(run)
    assert step == 5 and extra is not None and extra["blocks"]["fc1"]["kernel"].shape[0] == 1

    bare = str(tmp_path / "bare")
    checkpoint_io.save_params(bare, params, config, tokenizer_dir=checkpoint_io.tokenizer_path(imported_ckpt))
    lines = exporter.export(bare, "hf-llava", str(tmp_path / "zeros"))
    assert any("written as zeros" in line for line in lines)
    model = transformers.LlavaForConditionalGeneration.from_pretrained(str(tmp_path / "zeros"))
    assert not model.config.vision_config.vision_use_head
    assert torch.count_nonzero(model.model.vision_tower.encoder.layers[2].mlp.fc1.weight) == 0

    lines = exporter.export(bare, "hf-llava", str(tmp_path / "real"), vision_src=hf_vision[0])
    assert not any("zeros" in line for line in lines)
    model = transformers.LlavaForConditionalGeneration.from_pretrained(str(tmp_path / "real"))
    source = hf_vision[1].state_dict()
    assert torch.equal(model.model.vision_tower.encoder.layers[2].mlp.fc1.weight, source["encoder.layers.2.mlp.fc1.weight"])
    assert torch.equal(model.model.vision_tower.head.probe, source["head.probe"])


def test_bf16_export_loads(tmp_path, imported_ckpt):
    out = str(tmp_path / "bf16")
    exporter.export(imported_ckpt, "hf-llava", out, dtype="bf16")
    model = transformers.LlavaForConditionalGeneration.from_pretrained(out)
    assert model.dtype == torch.bfloat16
    _, params, _ = checkpoint_io.load_params(imported_ckpt)
    expected = torch.from_numpy(params["projector"]["fc1"]["kernel"].T.copy()).to(torch.bfloat16)
    assert torch.equal(model.model.multi_modal_projector.linear_1.weight, expected)
