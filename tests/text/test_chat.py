"""text/chat.py: the original's SFT template token for token (built here from its exact strings), the stock Qwen2
templates equal to transformers' apply_chat_template, roles checked and repaired, generation prompts."""

from __future__ import annotations

import json
import os
import shutil
from typing import Mapping

import numpy as np
import pytest

from fixtures.data import tiny_tokenizer, tiny_tokenizer_dir  # noqa: F401  (fixtures)

from oq2vl_jax.text import chat
from oq2vl_jax.text.documents import TextEncoder
from oq2vl_jax.text.tokens import load_tokenizer

T_IMG = 5
IGNORE, IMAGE = -100, -200

# ---------------------------------------------------------------------------------------------------------------
# The original, written out from its exact strings (prismatic-vlms/prismatic/models/backbones/llm/prompting/
# qwen2_prompter.py, prismatic/util/data_utils.py `tokenizer_image_token`, prismatic/preprocessing/datasets/
# datasets.py `FinetuneDataset.__getitem__`). `drop=False` is our documented fix: nothing after an image is dropped.


class OriginalQwen2PromptBuilder:
    def __init__(self):
        self.system_prompt = "<s><|im_start|>system\nYou are a helpful assistant.<|im_end|>\n"
        self.bos, self.eos = "<s>", "<|im_end|>"
        self.wrap_human = lambda msg: f"<|im_start|>user\n{msg}<|im_end|>assistant\n"
        self.wrap_gpt = lambda msg: f"{msg if msg != '' else ' '}{self.eos}\n"
        self.prompt, self.turn_count = "", 0

    def add_turn(self, role, message):
        message = message.strip()
        if self.turn_count == 0:
            wrapped = self.system_prompt + self.wrap_human(message)
        elif (self.turn_count % 2) == 0:
            wrapped = self.wrap_human(message)
        else:
            wrapped = self.wrap_gpt(message)
        self.prompt += wrapped
        self.turn_count += 1
        return wrapped


def original_tokenizer_image_token(prompt, tokenizer, drop=True):
    chunks = [tokenizer(chunk).input_ids for chunk in prompt.split("<image>")]

    def insert_separator(x, sep):
        return [e for sub in zip(x, [sep] * len(x)) for e in sub][:-1]

    input_ids, labels, offset = [], [], 0
    if len(chunks) > 0 and len(chunks[0]) > 0 and chunks[0][0] == tokenizer.bos_token_id:
        offset = 1
        input_ids.append(chunks[0][0])
        labels.append(chunks[0][0])
    if drop:
        for x in insert_separator(chunks, [IMAGE] * (offset + 1)):
            input_ids.extend(x[offset:])
        for x in insert_separator(chunks, [IGNORE] * (offset + 1)):
            labels.extend(x[offset:])
    else:  # the fix: only the <s> already emitted is skipped
        for c, x in enumerate(chunks):
            if c:
                input_ids.append(IMAGE)
                labels.append(IGNORE)
            input_ids.extend(x[offset:] if c == 0 else x)
            labels.extend(x[offset:] if c == 0 else x)
    return input_ids, labels


def original_finetune_item(conversation, tokenizer, drop=True):
    builder, input_ids, labels = OriginalQwen2PromptBuilder(), [], []
    self_offset = 1 if tokenizer.encode("\n")[0] == tokenizer.bos_token_id else 0
    for turn_idx, turn in enumerate(conversation):
        msg = builder.add_turn(turn["from"], turn["value"])
        turn_input_ids, turn_labels = original_tokenizer_image_token(msg, tokenizer, drop)
        turn_labels = [IGNORE for _ in range(len(turn_labels))] if (turn_idx % 2) == 0 else list(turn_labels)
        input_ids.extend(turn_input_ids if turn_idx == 0 else turn_input_ids[self_offset:])
        labels.extend(turn_labels if turn_idx == 0 else turn_labels[self_offset:])
    return input_ids, labels


def expand(input_ids, labels):
    """-200 -> T_IMG image positions: (ids with 0 there, image mask, trained mask = label is a real token)."""
    ids, image, trained = [], [], []
    for tok, lab in zip(input_ids, labels):
        if tok == IMAGE:
            ids += [0] * T_IMG
            image += [True] * T_IMG
            trained += [False] * T_IMG
        else:
            ids.append(tok)
            image.append(False)
            trained.append(lab != IGNORE)
    return np.asarray(ids), np.asarray(image), np.asarray(trained)


def h(value):
    return {"from": "human", "value": value}


def g(value):
    return {"from": "gpt", "value": value}


LLAVA_RECORDS = {
    "single_turn": [h("<image>\nWhat colour is the shape?"), g("Red.")],
    "multi_turn": [h("<image>\nWhat colour is the shape?"), g("Red."), h("Where is the circle?"),
                   g("at the top left"), h("  Describe the image.  "), g("a red circle at the top left")],
    "image_after_text": [h("What shape is in the image?\n<image>"), g("a circle")],
    "image_mid_text": [h("Is there<image> a red shape?"), g("Yes")],
    "text_only": [h("What is a circle?"), g("a round shape"), h("And a square?"), g("four sides")],
    "empty_answer": [h("<image>\nDescribe the image."), g("")],
    "blank_answer": [h("<image>\nDescribe the image."), g("  \n ")],
    "two_images": [h("<image>\n<image>\nWhich shape is red?"), g("the circle")],
    "image_in_later_turn": [h("Hello"), g("Hi."), h("<image>\nWhat colour?"), g("Blue.")],
}


@pytest.mark.parametrize("name", sorted(LLAVA_RECORDS))
@pytest.mark.parametrize("reference_compat", [False, True])
def test_open_qwen2vl_equals_the_original(tiny_tokenizer, name, reference_compat):
    conversation = LLAVA_RECORDS[name]
    n_images = sum(t["value"].count("<image>") for t in conversation)
    doc = chat.conversation_document(conversation, "open_qwen2vl", tiny_tokenizer, T_IMG, num_images=n_images,
                                     reference_compat=reference_compat)
    assert doc.counts == {} and doc.num_images == n_images
    ids, image, trained = expand(*original_finetune_item(conversation, tiny_tokenizer, drop=reference_compat))
    layout = doc.layout
    np.testing.assert_array_equal(layout.ids, ids)
    np.testing.assert_array_equal(layout.image_mask, image)
    np.testing.assert_array_equal(layout.target_mask, trained)
    assert list(layout.image_starts) == [int(i) for i in np.flatnonzero(image)[::T_IMG]]


def test_the_fix_restores_exactly_the_dropped_tokens(tiny_tokenizer):
    """Without reference_compat, the difference to the original is the first token after each turn-0 image:
    the "\\n" after a leading image, `<|im_end|>` after a trailing one."""
    enc = TextEncoder.from_tokenizer(tiny_tokenizer)
    newline = enc.encode("\n")
    cases = {"single_turn": newline, "image_after_text": [enc.eos_id], "two_images": newline + newline}
    for name, dropped in cases.items():
        conversation = LLAVA_RECORDS[name]
        ours = chat.conversation_document(conversation, "open_qwen2vl", tiny_tokenizer, T_IMG).layout
        original, _, _ = expand(*original_finetune_item(conversation, tiny_tokenizer, drop=True))
        assert ours.length == len(original) + len(dropped)
        after_images = [s + T_IMG for s in ours.image_starts]
        assert [int(ours.ids[p]) for p in after_images] == dropped
        keep = np.ones(ours.length, bool)
        keep[after_images] = False
        np.testing.assert_array_equal(ours.ids[keep], original)


def test_loss_mask_is_answer_im_end_and_newline(tiny_tokenizer):
    doc = chat.conversation_document(LLAVA_RECORDS["multi_turn"], "open_qwen2vl", tiny_tokenizer, T_IMG).layout
    trained_text = tiny_tokenizer.decode(doc.ids[doc.target_mask])
    assert trained_text == "Red.<|im_end|>\nat the top left<|im_end|>\na red circle at the top left<|im_end|>\n"
    assert tiny_tokenizer.decode(doc.ids[:1]) == "<s>"


# ---------------------------------------------------------------------------------------------------------------
# The stock templates: transformers' apply_chat_template with the templates of the Qwen2 / Qwen2.5 Instruct
# tokenizer_config.json (the tool-calling branches of Qwen2.5's are left out: we have no tools).

QWEN2_TEMPLATE = (
    "{% for message in messages %}{% if loop.first and messages[0]['role'] != 'system' %}"
    "{{ '<|im_start|>system\nYou are a helpful assistant.<|im_end|>\n' }}{% endif %}"
    "{{'<|im_start|>' + message['role'] + '\n' + message['content'] + '<|im_end|>' + '\n'}}{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}")
QWEN25_TEMPLATE = (
    "{%- if messages[0]['role'] == 'system' %}\n"
    "    {{- '<|im_start|>system\\n' + messages[0]['content'] + '<|im_end|>\\n' }}\n"
    "{%- else %}\n"
    "    {{- '<|im_start|>system\\nYou are Qwen, created by Alibaba Cloud. You are a helpful assistant."
    "<|im_end|>\\n' }}\n"
    "{%- endif %}\n"
    "{%- for message in messages %}\n"
    "    {%- if (message.role == \"user\") or (message.role == \"system\" and not loop.first) or "
    "(message.role == \"assistant\" and not message.tool_calls) %}\n"
    "        {{- '<|im_start|>' + message.role + '\\n' + message.content + '<|im_end|>' + '\\n' }}\n"
    "    {%- endif %}\n"
    "{%- endfor %}\n"
    "{%- if add_generation_prompt %}\n"
    "    {{- '<|im_start|>assistant\\n' }}\n"
    "{%- endif %}\n")


@pytest.fixture(scope="module", params=[("qwen2", QWEN2_TEMPLATE), ("qwen2.5", QWEN25_TEMPLATE)],
                ids=["qwen2", "qwen2.5"])
def templated(request, tiny_tokenizer_dir, tmp_path_factory):
    fmt, template = request.param
    out = str(tmp_path_factory.mktemp(fmt.replace(".", "")))
    for name in os.listdir(tiny_tokenizer_dir):
        shutil.copy(os.path.join(tiny_tokenizer_dir, name), out)
    with open(os.path.join(out, "tokenizer_config.json")) as f:
        config = json.load(f)
    config["chat_template"] = template
    with open(os.path.join(out, "tokenizer_config.json"), "w") as f:
        json.dump(config, f)
    return fmt, load_tokenizer(out)


def _hf(messages):
    return [{"role": {"human": "user", "gpt": "assistant"}.get(t["from"], t["from"]), "content": t["value"]}
            for t in messages]


def _apply(tokenizer, messages, add_generation_prompt=False):
    """apply_chat_template, with <image> spliced in as T_IMG image positions (text chunks tokenized apart)."""
    text = tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=add_generation_prompt)
    ids = []
    for c, chunk in enumerate(text.split("<image>")):
        ids += [0] * T_IMG * (c > 0) + tokenizer(chunk, add_special_tokens=False).input_ids
    return text, ids


STOCK_CASES = {
    "single_turn": [h("<image>\nWhat colour is the shape?"), g("Red.")],
    "multi_turn": LLAVA_RECORDS["multi_turn"],
    "text_only": LLAVA_RECORDS["text_only"],
    "with_system": [{"from": "system", "value": "Answer briefly."}, h("What is a circle?"), g("round")],
    "unstripped": [h("  spaces around  "), g(" \nleading newline and space\n")],
    "two_images": LLAVA_RECORDS["two_images"],
}


@pytest.mark.parametrize("name", sorted(STOCK_CASES))
def test_stock_format_equals_apply_chat_template(templated, name):
    fmt, tokenizer = templated
    messages = _hf(STOCK_CASES[name])
    if "<image>" not in json.dumps(messages):  # no image: compare with the tokenized call itself
        direct = tokenizer.apply_chat_template(messages, tokenize=True)
        direct = direct["input_ids"] if isinstance(direct, Mapping) else direct  # transformers 5 returns a dict
        assert list(direct) == _apply(tokenizer, messages)[1]
    text, expected = _apply(tokenizer, messages)
    layout = chat.conversation_document(messages, fmt, tokenizer, T_IMG).layout
    np.testing.assert_array_equal(layout.ids, expected)
    # trained = each answer + <|im_end|> + "\n" (a token straddling "assistant\n" and the answer stays masked)
    answers = [m["content"] for m in messages if m["role"] == "assistant"]
    trained = tokenizer.decode(layout.ids[layout.target_mask])
    assert trained == "".join(a + "<|im_end|>\n" for a in answers)
    prompt_messages = messages[:-1]
    _, expected_prompt = _apply(tokenizer, prompt_messages, add_generation_prompt=True)
    prompt = chat.generation_prompt(prompt_messages, fmt, tokenizer, T_IMG)
    np.testing.assert_array_equal(prompt.ids, expected_prompt)
    assert prompt.target_mask is None


# ---------------------------------------------------------------------------------------------------------------
# Roles, placeholders, generation prompts


def test_roles_repaired_and_counted(tiny_tokenizer):
    messy = [g("I speak first"), h("<image>\nWhat colour?"), h("Be brief."), g("Red."), g("Really red."),
             h("unanswered")]
    doc = chat.conversation_document(messy, "open_qwen2vl", tiny_tokenizer, T_IMG, num_images=1)
    assert doc.counts == {"repaired_roles": 4}
    clean = [h("<image>\nWhat colour?\nBe brief."), g("Red.\nReally red.")]
    ref = chat.conversation_document(clean, "open_qwen2vl", tiny_tokenizer, T_IMG, num_images=1)
    np.testing.assert_array_equal(doc.layout.ids, ref.layout.ids)
    np.testing.assert_array_equal(doc.layout.target_mask, ref.layout.target_mask)


@pytest.mark.parametrize("bad", [
    [], [h("only a question")], [{"from": "robot", "value": "beep"}, g("x")], [h(3), g("x")],
    [h("q"), {"from": "system", "value": "late system"}, g("a")], "not a list",
])
def test_invalid_conversations_rejected(tiny_tokenizer, bad):
    doc = chat.conversation_document(bad, "open_qwen2vl", tiny_tokenizer, T_IMG)
    assert doc.layout is None and doc.counts == {"conversation_invalid": 1}


def test_image_placeholders(tiny_tokenizer):
    no_placeholder = [h("What colour?"), g("Red.")]
    doc = chat.conversation_document(no_placeholder, "open_qwen2vl", tiny_tokenizer, T_IMG, num_images=1)
    ref = chat.conversation_document([h("<image>\nWhat colour?"), g("Red.")], "open_qwen2vl", tiny_tokenizer,
                                     T_IMG, num_images=1)
    assert doc.counts == {"repaired_image_placeholder": 1}
    np.testing.assert_array_equal(doc.layout.ids, ref.layout.ids)
    text_only = chat.conversation_document(LLAVA_RECORDS["single_turn"], "open_qwen2vl", tiny_tokenizer, T_IMG,
                                           num_images=0)
    assert text_only.num_images == 0 and text_only.counts == {"repaired_image_placeholder": 1}
    mismatch = chat.conversation_document(LLAVA_RECORDS["two_images"], "open_qwen2vl", tiny_tokenizer, T_IMG,
                                          num_images=1)
    assert mismatch.layout is None and mismatch.counts == {"conversation_invalid": 1}


def test_hf_content_parts_and_generation_prompt(tiny_tokenizer):
    parts = [{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": "\nWhat colour is the shape?"}]}]
    prompt = chat.generation_prompt(parts, "open_qwen2vl", tiny_tokenizer, T_IMG)
    full = chat.conversation_document(LLAVA_RECORDS["single_turn"], "open_qwen2vl", tiny_tokenizer, T_IMG).layout
    # the prompt is the training document up to the answer: "... <|im_end|>assistant\n"
    np.testing.assert_array_equal(prompt.ids, full.ids[:prompt.length])
    assert not full.target_mask[:prompt.length].any() and full.target_mask[prompt.length]
    assert prompt.image_starts == full.image_starts and tiny_tokenizer.decode(prompt.ids[-6:]).endswith(
        "<|im_end|>assistant\n")
    with pytest.raises(chat.ConversationError):
        chat.generation_prompt(LLAVA_RECORDS["single_turn"], "open_qwen2vl", tiny_tokenizer, T_IMG)
    with pytest.raises(chat.ConversationError, match="unknown chat format"):
        chat.conversation_document(LLAVA_RECORDS["single_turn"], "vicuna", tiny_tokenizer, T_IMG)
