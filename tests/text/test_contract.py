"""One prompt contract from training to inference: for every chat format x label mode x record shape, the generation
prompt's ids are the training document's ids up to the first token of the answer it asks for, whichever way the
request is asked (messages with placeholders, messages with image parts, an image given apart from the text), through
`VLMInference`, the generate CLI and the evaluation model; the checkpoint records the contract (old ones: a default
and a warning). The hf-llava export's side: tests/convert/test_chat_template.py."""

from __future__ import annotations

import json

import numpy as np
import pytest

from fixtures.contract import (CONTRACTS, IMAGE_SIZE, SHAPES, T_IMG, assert_same, g, h, images, request_variants,
                               training_prefix)
from fixtures.data import tiny_tokenizer, tiny_tokenizer_dir  # noqa: F401  (fixtures)
from oq2vl_jax import checkpoint_io
from oq2vl_jax.errors import UserError
from oq2vl_jax.inference import prompts as prompt_lib
from oq2vl_jax.text import contract as contract_lib, documents as tok_lib


@pytest.mark.parametrize("contract", CONTRACTS, ids=lambda c: f"{c.chat_format}-{c.label_mode}")
@pytest.mark.parametrize("shape", sorted(SHAPES))
def test_generation_prompt_is_the_training_document_up_to_the_answer(tiny_tokenizer, contract, shape):
    conv = SHAPES[shape]
    want = training_prefix(conv, contract, tiny_tokenizer, T_IMG)
    encoder = tok_lib.TextEncoder.from_tokenizer(tiny_tokenizer)
    for name, request in request_variants(conv).items():
        built = prompt_lib.build_prompt(request, encoder, template="chat", tokens_per_image=T_IMG,
                                        image_size=IMAGE_SIZE, contract=contract)
        assert_same(built.document, want, f"{shape} asked as {name}")


def test_every_shape_is_asked_apart_from_its_images_somewhere():
    """The --image + --prompt path is covered (not only messages with placeholders)."""
    asked = {name for conv in SHAPES.values() for name in request_variants(conv)}
    assert {"placeholders", "image_parts", "images_apart", "text_only"} <= asked


def test_placeholder_in_text_plus_image_is_one_slot(tiny_tokenizer):
    encoder = tok_lib.TextEncoder.from_tokenizer(tiny_tokenizer)
    one = prompt_lib.build_prompt({"text": "<image>\nWhat colour?", "images": images(1)}, encoder, template="chat",
                                  tokens_per_image=T_IMG, image_size=IMAGE_SIZE)
    apart = prompt_lib.build_prompt({"text": "What colour?", "images": images(1)}, encoder, template="chat",
                                    tokens_per_image=T_IMG, image_size=IMAGE_SIZE)
    assert one.document.num_images == 1 and one.document.ids.tolist() == apart.document.ids.tolist()
    with pytest.raises(UserError, match="2 <image> placeholders for 1 images"):
        prompt_lib.build_prompt({"text": "<image><image>x", "images": images(1)}, encoder, template="chat",
                                tokens_per_image=T_IMG, image_size=IMAGE_SIZE)
    with pytest.raises(UserError, match="1 <image> placeholders for 0 images"):
        prompt_lib.build_prompt({"text": "<image>x"}, encoder, template="chat", tokens_per_image=T_IMG,
                                image_size=IMAGE_SIZE)


# ------------------------------------------------------------------------------------------ checkpoint records
def test_checkpoint_contract_record_and_defaults():
    trained = contract_lib.PromptContract("qwen2.5", "reference_compat")
    meta = {"format": "oq2vl_jax", **checkpoint_io.contract_meta(trained)}
    assert checkpoint_io.prompt_contract(meta) == (trained, None)
    # saved before the record: a trained step's config says it exactly; an import is the original's; else default
    old_trained = {"train_config": json.dumps({"data": {"chat_format": "qwen2", "label_mode": "default"}})}
    assert checkpoint_io.prompt_contract(old_trained) == (contract_lib.PromptContract("qwen2", "default"), None)
    contract, warning = checkpoint_io.prompt_contract({"source": ["prismatic run"]})
    assert contract == contract_lib.ORIGINAL and "original" in warning
    contract, warning = checkpoint_io.prompt_contract({})
    assert contract == contract_lib.TRAINED_DEFAULT and "default" in warning
    with pytest.raises(UserError, match="unknown chat format"):
        checkpoint_io.prompt_contract({"data_contract": {"chat_format": "vicuna"}})


# ------------------------------------------------------------------------------------------ the real entry points
def test_vlm_inference_asks_as_training_taught(tiny_tokenizer_dir, tiny_tokenizer):  # noqa: F811
    """VLMInference.generate/score/candidate_probabilities all build their prompts with `prompts`."""
    from fixtures.inference import tiny_inference

    vlm = tiny_inference(tiny_tokenizer_dir, 4)
    conv = SHAPES["image_first_newline"]
    want = training_prefix(conv, contract_lib.TRAINED_DEFAULT, tiny_tokenizer, 4)
    question = conv[0]["value"].removeprefix("<image>\n")
    image = np.zeros((20, 30, 3), np.uint8)
    for request in ({"image": image, "text": question}, {"image": image, "text": conv[0]["value"]},
                    {"image": image, "messages": [{"role": "user", "content": [{"type": "image"},
                                                                               {"type": "text", "text": question}]}]}):
        assert_same(vlm.prompts([request], "chat")[0].document, want, str(request.keys()))


def _save_tiny_checkpoint(root, contract):
    import jax
    from flax import nnx

    from fixtures.inference import tiny_config
    from oq2vl_jax.demo.shapes import build_tiny_tokenizer
    from oq2vl_jax.models.params import param_tree
    from oq2vl_jax.models.vlm import VLM
    from oq2vl_jax.text import tokens

    config = tiny_config(4)
    tok = str(root / "tok")
    tokens.prepare(build_tiny_tokenizer(str(root / "tok_src")), tok, vocab_size=config.llm.vocab_size)
    params = jax.tree.map(np.asarray, param_tree(VLM(config, rngs=nnx.Rngs(0))))
    meta = checkpoint_io.contract_meta(contract) if contract is not None else {}
    out = str(root / "ckpt")
    checkpoint_io.save_params(out, params, config, tokenizer_dir=tok, **meta)
    return out, tok


def test_generate_cli_prompt_is_thetraining_prefix(tmp_path):
    """`generate --image X --prompt Q --json` on a checkpoint recording reference_compat: the prompt as the model
    saw it is the training document's prefix (decoded), and a checkpoint without a record warns once."""
    from PIL import Image

    from fixtures.inference import run_generate_cli as run_cli
    from oq2vl_jax.text import tokens

    contract = contract_lib.PromptContract("open_qwen2vl", "reference_compat")
    ckpt, tok = _save_tiny_checkpoint(tmp_path, contract)
    image = str(tmp_path / "a.png")
    Image.fromarray(np.zeros((30, 40, 3), np.uint8)).save(image)
    question = "What colour is the shape?"
    proc = run_cli("--ckpt", ckpt, "--image", image, "--prompt", question, "--max-new-tokens", "2", "--json")
    assert proc.returncode == 0 and proc.stderr.strip() == "", proc.stderr[-2000:]
    answer = json.loads(proc.stdout.strip().splitlines()[-1])
    tokenizer = tokens.load_tokenizer(tok)
    want = training_prefix([h("<image>\n" + question), g("Red.")], contract, tokenizer, 4)
    assert answer["prompt"] == prompt_lib.describe(want, lambda ids: tokenizer.decode(ids, skip_special_tokens=False))
    assert "<image:4 tokens>What colour" in answer["prompt"]  # the original's dropped "\n"
    assert answer["prompt_contract"] == contract.to_dict() and len(answer["token_ids"]) == answer["num_tokens"]
    # --label-mode / label_mode overrides the record: the "\n" the default label mode keeps is back
    from oq2vl_jax.inference import VLMInference

    vlm = VLMInference.load(ckpt, label_mode="default")
    assert vlm.contract == contract_lib.TRAINED_DEFAULT and vlm.contract_warning is None
    built = vlm.prompts([{"image": image, "text": question}], "chat")[0]
    assert "<image:4 tokens>\nWhat colour" in vlm.describe_prompt(built)


def test_checkpoint_without_record_warns(tmp_path):
    """(the generate CLI prints `contract_warning` as one "warning:" line)"""
    from oq2vl_jax.inference import VLMInference

    ckpt, _ = _save_tiny_checkpoint(tmp_path, None)
    vlm = VLMInference.load(ckpt)
    assert vlm.contract == contract_lib.TRAINED_DEFAULT
    assert vlm.contract_warning.startswith("the checkpoint does not record its prompt contract")


def test_evaluation_chat_prompt_follows_the_contract(tiny_tokenizer_dir, tiny_tokenizer):  # noqa: F811
    """`evaluate --prompt chat` (every task's chat request is the user message with `<image>` markers): the prompt
    the model gets, and the text recorded per item, are the training document's prefix."""
    from fixtures.inference import tiny_inference
    from oq2vl_jax.evals.checkpoint_model import InferenceModel
    from oq2vl_jax.evals.kit import Request

    for contract in (contract_lib.TRAINED_DEFAULT, contract_lib.ORIGINAL):
        vlm = tiny_inference(tiny_tokenizer_dir, 4, contract=contract)
        model = InferenceModel(vlm)
        conv = SHAPES["image_first_newline"]
        want = training_prefix(conv, contract, tiny_tokenizer, 4)
        request = Request(conv[0]["value"], (np.zeros((20, 30, 3), np.uint8),), template="chat")
        assert_same(model._prompt(request, "item").document, want, contract.label_mode)
        assert model.prompt_text(request) == prompt_lib.describe(
            want, lambda ids: tiny_tokenizer.decode(ids, skip_special_tokens=False))
