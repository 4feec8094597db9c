"""Our generation == transformers' greedy `generate` on the hf-llava export of the same weights, from raw PIL images
and text through the exported `AutoProcessor` (chat template included)."""

import json
import os

import numpy as np
import pytest
import torch
import transformers
from PIL import Image

from fixtures.convert import hf_llm, hf_vision, imported_ckpt, tiny_tokenizer_dir  # noqa: F401
from oq2vl_jax.convert import exporter
from oq2vl_jax.convert.__main__ import main as convert_main
from oq2vl_jax.inference import VLMInference

NEW_TOKENS = 10


@pytest.fixture(scope="module")
def exported(tmp_path_factory, imported_ckpt):
    out = str(tmp_path_factory.mktemp("llava_gen") / "hf")
    exporter.export(imported_ckpt, "hf-llava", out)
    return out


def _pil(seed: int, size) -> Image.Image:
    return Image.fromarray(np.random.default_rng(seed).integers(0, 256, (*size, 3), dtype=np.uint8))


def test_export_serving_fields(exported):
    config = json.load(open(os.path.join(exported, "config.json")))
    assert config["vision_feature_layer"] == -2 and config["image_aspect_ratio"] == "square"
    assert config["vision_config"]["hidden_act"] == "gelu"  # the fixture tower is erf-GELU, as timm's
    assert config["image_token_index"] == transformers.AutoTokenizer.from_pretrained(exported).convert_tokens_to_ids(
        "<image>")
    processor = json.load(open(os.path.join(exported, "processor_config.json")))
    image = processor.get("image_processor", processor)
    if "image_mean" not in image:
        image = json.load(open(os.path.join(exported, "preprocessor_config.json")))
    assert image["image_mean"] == [0.5] * 3 and image["image_std"] == [0.5] * 3 and image["resample"] == 3
    assert os.path.isfile(os.path.join(exported, "generation_config.json"))


def test_transformers_generate_equals_ours(exported, imported_ckpt):
    ours_vlm = VLMInference.load(imported_ckpt, compute_dtype="float32")
    gen_cfg = transformers.GenerationConfig.from_pretrained(exported)
    assert sorted(gen_cfg.eos_token_id) == sorted(ours_vlm.stop_ids)
    model = transformers.LlavaForConditionalGeneration.from_pretrained(exported, attn_implementation="eager").eval()
    processor = transformers.AutoProcessor.from_pretrained(exported)
    cases = [([_pil(0, (45, 37))], "Describe the image."),
             ([_pil(1, (30, 60)), _pil(2, (28, 28))], "What is different?")]
    theirs = []
    for pil_images, text in cases:
        messages = [{"role": "user", "content": [{"type": "image"}] * len(pil_images) + [{"type": "text",
                                                                                          "text": text}]}]
        prompt = processor.apply_chat_template(messages, add_generation_prompt=True)
        inputs = processor(images=pil_images, text=prompt, return_tensors="pt")
        with torch.no_grad():
            out = model.generate(**inputs, max_new_tokens=NEW_TOKENS, do_sample=False)
        new = out[0, inputs["input_ids"].shape[1]:].tolist()
        stop_at = next((i for i, t in enumerate(new) if t in gen_cfg.eos_token_id), len(new))
        theirs.append(new[:stop_at])  # ours reports the tokens before the stop token
    ours = ours_vlm.generate([{"images": imgs, "text": text} for imgs, text in cases], template="chat",
                             max_new_tokens=NEW_TOKENS, details=True)
    assert [list(g.token_ids) for g in ours] == theirs
    assert sum(len(t) for t in theirs) >= 4  # tokens were compared, not just two immediate stops
    # the export imported back (a released model) answers the same through our API
    back = os.path.join(os.path.dirname(exported), "back")
    assert convert_main(["import", "--from", "hf-llava", exported, "--out", back]) == 0
    again = VLMInference.load(back, compute_dtype="float32")
    assert again.generate([{"images": imgs, "text": text} for imgs, text in cases], max_new_tokens=NEW_TOKENS) == [
        g.text for g in ours]
