"""The hf-llava export asks as training taught: its chat template + processor (what `AutoProcessor.apply_chat_template`
+ `LlavaForConditionalGeneration.generate` see) give the training document's ids up to the answer, for every chat
format x label mode x record shape of tests/text/test_contract.py; the export records the contract and the import
reads it back."""

from __future__ import annotations

import json
import os

import numpy as np
import pytest

from fixtures.convert import hf_llm, hf_vision, imported_ckpt, tiny_tokenizer_dir  # noqa: F401  (fixtures)
from oq2vl_jax import checkpoint_io
from oq2vl_jax.text import contract as contract_lib
from fixtures.contract import CONTRACTS, SHAPES, request_variants, training_prefix


@pytest.fixture(scope="module")
def exported(tmp_path_factory, imported_ckpt):  # noqa: F811
    from oq2vl_jax.convert.__main__ import main as convert_main

    out = str(tmp_path_factory.mktemp("contract_llava") / "hf")
    assert convert_main(["export", "--ckpt", imported_ckpt, "--to", "hf-llava", "--out", out]) == 0
    return out


def _processor(exported_dir: str, contract):
    import transformers

    from oq2vl_jax.convert.chat_template import chat_template

    processor = transformers.AutoProcessor.from_pretrained(exported_dir)
    processor.chat_template = chat_template(contract)
    return processor


def test_export_records_the_contract(exported, imported_ckpt):  # noqa: F811
    import transformers

    from oq2vl_jax.convert import llava
    from oq2vl_jax.convert.chat_template import chat_template

    _, meta = checkpoint_io.load_meta(imported_ckpt)
    contract, warning = checkpoint_io.prompt_contract(meta)
    assert warning is None and contract == contract_lib.TRAINED_DEFAULT  # an --llm/--vision import: ours
    config = json.load(open(os.path.join(exported, "config.json")))
    assert config[llava.CONTRACT_KEY] == contract.to_dict()
    assert transformers.AutoProcessor.from_pretrained(exported).chat_template == chat_template(contract)
    assert llava.read_contract(config, "x") == contract and llava.read_contract({}, "x") == contract_lib.ORIGINAL


def _refused(contract, shape) -> bool:
    """The one case a template cannot write: the original's dropped token after an image followed by other text in
    the first user turn (convert/chat_template.py)."""
    first_user = SHAPES[shape][0]["value"]
    after = first_user.split("<image>")[1:]
    return (contract.chat_format == "open_qwen2vl" and contract.reference_compat
            and any(chunk and not chunk.startswith("\n") for chunk in after))


@pytest.mark.parametrize("contract", CONTRACTS, ids=lambda c: f"{c.chat_format}-{c.label_mode}")
def test_exported_template_and_processor_give_the_training_ids(exported, imported_ckpt, contract):  # noqa: F811
    """apply_chat_template(add_generation_prompt=True) + the processor (what LlavaForConditionalGeneration.generate
    sees) == the training document up to the answer, for every shape and both ways of writing images."""
    from PIL import Image

    from oq2vl_jax.text import tokens

    processor = _processor(exported, contract)
    tokenizer = tokens.load_tokenizer(checkpoint_io.tokenizer_path(imported_ckpt))
    config = json.load(open(os.path.join(exported, "config.json")))
    t_img, image_id = config["image_seq_length"], config["image_token_index"]
    for shape, conv in sorted(SHAPES.items()):
        want = training_prefix(conv, contract, tokenizer, t_img)
        for name, request in request_variants(conv).items():
            if "messages" not in request:
                continue  # HF chat templates take messages only
            if _refused(contract, shape):
                with pytest.raises(Exception, match="reads an image in the first user message only"):
                    processor.apply_chat_template(request["messages"], add_generation_prompt=True)
                continue
            text = processor.apply_chat_template(request["messages"], add_generation_prompt=True)
            pil = [Image.fromarray(a) for a in request["images"]] or None
            ids = processor(images=pil, text=text, return_tensors="np")["input_ids"][0]
            where = f"{shape} asked as {name}"
            assert (ids == image_id).tolist() == want.image_mask.tolist(), where
            assert np.where(ids == image_id, 0, ids).tolist() == want.ids.tolist(), where
