"""Chat formats for supervised fine-tuning and for inference prompts: conversation -> document + loss mask.

A conversation is a list of turns `{"from" | "role": ..., "value" | "content": ...}` (LLaVA's human/gpt or the
OpenAI/HF user/assistant/system names). `<image>` may appear anywhere in a turn, several times; content may also be
an HF-style list of parts ({"type": "image"} / {"type": "text", "text": ...}), turned into `<image>` + text.

Formats, chosen by name (`CHAT_FORMATS`; the config field data.chat_format):

  "open_qwen2vl"  the original's `Qwen2PromptBuilder` (prismatic-vlms/prismatic/models/backbones/llm/prompting/
                  qwen2_prompter.py) as its `FinetuneDataset` tokenizes it (prismatic-vlms/prismatic/preprocessing/
                  datasets/datasets.py):
                      <s><|im_start|>system\\nYou are a helpful assistant.<|im_end|>\\n      (once, before turn 0)
                      <|im_start|>user\\n{msg.strip()}<|im_end|>assistant\\n              (no "\\n<|im_start|>" before
                                                                                         "assistant": as the original)
                      {msg.strip() or " "}<|im_end|>\\n
                  Each turn is tokenized on its own, `<image>` splits a turn into separately tokenized chunks.
  "qwen2"         the stock Qwen2-Instruct chat template as transformers' `apply_chat_template` renders it:
                      <|im_start|>system\\n{system}<|im_end|>\\n<|im_start|>{role}\\n{content}<|im_end|>\\n ...
                  default system "You are a helpful assistant."; the whole text is tokenized at once (split only at
                  `<image>`), as `apply_chat_template(tokenize=True)` does; contents are not stripped.
  "qwen2.5"       the same with Qwen2.5-Instruct's default system prompt ("You are Qwen, created by Alibaba Cloud. You
                  are a helpful assistant.").

Loss mask (`DocumentLayout.target_mask`, True = may be predicted): every assistant answer, its `<|im_end|>` and the
newline after it, as the original; nothing of the system prompt, user turns or the assistant header. In "qwen2*" a
token that straddles the header/answer boundary (an answer starting with a newline) stays masked.

The original's dropped token: `tokenizer_image_token` drops the first token of every chunk after an `<image>` in
turn 0, because turn 0 starts with `<s>` (the "\\n" after the image, or `<|im_end|>` when the image ends the user
message; docs/sft.md). We keep every token; `reference_compat=True` reproduces the drop.

Roles are checked, not assumed from turn parity as the original does: consecutive turns of one role are joined with
"\\n", a leading assistant turn and a trailing user turn (nothing to learn) are dropped, all counted as
"repaired_roles"; an unknown role, a non-text value or no user->assistant exchange rejects the conversation
("conversation_invalid"). A leading system turn replaces the format's system prompt. If the record has images but no
`<image>` in its text, LLaVA's convention is applied ("<image>\\n" in front of the first user turn,
"repaired_image_placeholder"); placeholders in a text-only record are removed (same count); any other
placeholder/image count mismatch rejects the conversation.
"""

from __future__ import annotations

import dataclasses
from typing import Any, Mapping, Sequence

import numpy as np

from oq2vl_jax.text.documents import DocumentLayout, IMAGE_TOKEN_FILL, TextEncoder
from oq2vl_jax.text.tokens import BOS_TOKEN, EOS_TOKEN, IMAGE_TOKEN as IMAGE_PLACEHOLDER

CHAT_FORMATS = ("open_qwen2vl", "qwen2", "qwen2.5")
USER, ASSISTANT, SYSTEM = "user", "assistant", "system"
ROLE_NAMES = {"human": USER, "user": USER, "gpt": ASSISTANT, "assistant": ASSISTANT, "system": SYSTEM}

# The original's strings (qwen2_prompter.py)
OPEN_QWEN2VL_SYSTEM = "You are a helpful assistant."
OPEN_QWEN2VL_SYSTEM_PREFIX = f"{BOS_TOKEN}<|im_start|>system\n{{system}}{EOS_TOKEN}\n"
OPEN_QWEN2VL_USER = f"<|im_start|>user\n{{msg}}{EOS_TOKEN}assistant\n"
OPEN_QWEN2VL_ASSISTANT = f"{{msg}}{EOS_TOKEN}\n"
# The stock templates' default system prompts (tokenizer_config.json chat_template of Qwen2 / Qwen2.5 Instruct)
STOCK_SYSTEM = {"qwen2": "You are a helpful assistant.",
                "qwen2.5": "You are Qwen, created by Alibaba Cloud. You are a helpful assistant."}

REJECTED = "conversation_invalid"      # skip reason (data/stats.py)
REPAIRED_ROLES = "repaired_roles"      # repair reasons (data/stats.py)
REPAIRED_PLACEHOLDER = "repaired_image_placeholder"


class ConversationError(ValueError):
    """A conversation that cannot be formatted (counted as `conversation_invalid` by the pipeline)."""


@dataclasses.dataclass(frozen=True)
class ChatDocument:
    """A formatted conversation: `layout` (None when rejected) and the counts of what was repaired or rejected.

    The k-th image block of `layout` is the k-th image of the record (images in placeholder order).
    """
    layout: DocumentLayout | None
    counts: Mapping[str, int]

    @property
    def num_images(self) -> int:
        return 0 if self.layout is None else self.layout.num_images


def _content_text(content: Any, image_separator: str = "\n") -> str:
    """A turn's content as text with `<image>` placeholders. HF-style parts: each image part is `<image>`, and a run
    of image parts followed by a text part is joined to it with `image_separator` unless the text starts with it
    (LLaVA's "<image>\\n" layout; the exported chat template writes the same, convert/llava.py)."""
    if isinstance(content, str):
        return content
    if isinstance(content, (list, tuple)):  # HF-style parts
        out = []
        after_image = False
        for part in content:
            kind = part.get("type") if isinstance(part, Mapping) else None
            if kind == "image":
                out.append(IMAGE_PLACEHOLDER)
                after_image = True
            elif kind == "text" and isinstance(part.get("text"), str):
                text = part["text"]
                glue = after_image and not text.startswith(image_separator)
                out.append((image_separator if glue else "") + text)
                after_image = False
            else:
                raise ConversationError(f"unsupported content part {part!r}")
        return "".join(out)
    raise ConversationError(f"turn content must be text, got {type(content).__name__}")


def normalize_turns(turns: Any, num_images: int | None = None, *, for_generation: bool = False,
                    image_separator: str = "\n") -> tuple[str | None, list[tuple[str, str]], dict[str, int]]:
    """(system text or None, [(role, text)] alternating user/assistant from a user turn, repair counts).

    num_images: the record's image count (None: as many as placeholders). for_generation: the conversation must
    end with a user turn (it is the prompt), which is then kept, and placeholders without images are an error.
    image_separator: between images given apart from the text and that text (text/contract.py). Raises
    ConversationError.
    """
    if not isinstance(turns, (list, tuple)) or not turns:
        raise ConversationError("conversation must be a non-empty list of turns")
    counts: dict[str, int] = {}

    def repair(reason: str) -> None:
        counts[reason] = counts.get(reason, 0) + 1

    parsed = []
    for turn in turns:
        if not isinstance(turn, Mapping):
            raise ConversationError(f"turn must be a mapping, got {type(turn).__name__}")
        role = turn.get("from", turn.get("role"))
        if role not in ROLE_NAMES:
            raise ConversationError(f"unknown role {role!r}; known: {sorted(ROLE_NAMES)}")
        parsed.append((ROLE_NAMES[role], _content_text(turn.get("value", turn.get("content")), image_separator)))
    system = None
    if parsed[0][0] == SYSTEM:
        system = parsed.pop(0)[1]
    if any(role == SYSTEM for role, _ in parsed):
        raise ConversationError("a system turn is only allowed first")
    merged: list[tuple[str, str]] = []
    for role, text in parsed:
        if merged and merged[-1][0] == role:
            merged[-1] = (role, merged[-1][1] + "\n" + text)
            repair(REPAIRED_ROLES)
        else:
            merged.append((role, text))
    if merged and merged[0][0] == ASSISTANT:
        merged.pop(0)
        repair(REPAIRED_ROLES)
    if for_generation:
        if not merged or merged[-1][0] != USER:
            raise ConversationError("a generation prompt must end with a user turn")
    else:
        if merged and merged[-1][0] == USER:
            merged.pop()
            repair(REPAIRED_ROLES)
        if not merged:
            raise ConversationError("no user -> assistant exchange")
    placeholders = sum(text.count(IMAGE_PLACEHOLDER) for _, text in merged)
    if num_images is not None and placeholders != num_images:
        if placeholders == 0:   # LLaVA's convention: the image goes before the first user message
            merged[0] = (USER, IMAGE_PLACEHOLDER * num_images + image_separator + merged[0][1])
            repair(REPAIRED_PLACEHOLDER)
        elif num_images == 0 and not for_generation:  # text-only record (or its image was unusable): they go
            merged = [(role, text.replace(IMAGE_PLACEHOLDER, "")) for role, text in merged]
            repair(REPAIRED_PLACEHOLDER)
        else:
            raise ConversationError(f"{placeholders} <image> placeholders for {num_images} images")
    return system, merged, counts


# A rendered conversation: tokenization units (each tokenized on its own, split at <image>), each a list of
# (text, trained) pieces.
Unit = list[tuple[str, bool]]


def render(system: str | None, turns: Sequence[tuple[str, str]], fmt: str, *,
           add_generation_prompt: bool = False) -> list[Unit]:
    """Text units of a normalized conversation in format `fmt` (see the module doc)."""
    if fmt == "open_qwen2vl":
        units: list[Unit] = []
        for i, (role, text) in enumerate(turns):
            msg = text.strip()
            if role == USER:
                wrapped = OPEN_QWEN2VL_USER.format(msg=msg)
                if i == 0:
                    sys_text = OPEN_QWEN2VL_SYSTEM if system is None else system.strip()
                    wrapped = OPEN_QWEN2VL_SYSTEM_PREFIX.format(system=sys_text) + wrapped
                units.append([(wrapped, False)])
            else:
                units.append([(OPEN_QWEN2VL_ASSISTANT.format(msg=msg if msg != "" else " "), True)])
        return units  # the user wrapping already ends with the assistant header
    if fmt in STOCK_SYSTEM:
        sys_text = STOCK_SYSTEM[fmt] if system is None else system
        pieces: Unit = [(f"<|im_start|>system\n{sys_text}{EOS_TOKEN}\n", False)]
        for role, text in turns:
            if role == USER:
                pieces.append((f"<|im_start|>user\n{text}{EOS_TOKEN}\n", False))
            else:
                pieces.append(("<|im_start|>assistant\n", False))
                pieces.append((f"{text}{EOS_TOKEN}\n", True))
        if add_generation_prompt:
            pieces.append(("<|im_start|>assistant\n", False))
        return [pieces]
    raise ConversationError(f"unknown chat format {fmt!r}; known: {CHAT_FORMATS}")


def _tokenize_units(encoder: TextEncoder, units: Sequence[Unit], tokens_per_image: int,
                    reference_compat: bool) -> DocumentLayout:
    ids: list[int] = []
    trained: list[bool] = []
    is_image: list[bool] = []
    starts: list[int] = []
    for unit in units:
        text = "".join(t for t, _ in unit)
        spans, pos = [], 0  # trained character spans
        for piece, train in unit:
            if train:
                spans.append((pos, pos + len(piece)))
            pos += len(piece)
        chunks = text.split(IMAGE_PLACEHOLDER)
        drop = 0  # the original's tokenizer_image_token: a chunk 0 starting with <s> drops every later chunk's 1st
        offset = 0
        for c, chunk in enumerate(chunks):
            if c > 0:
                starts.append(len(ids))
                ids.extend([0] * tokens_per_image)
                trained.extend([False] * tokens_per_image)
                is_image.extend([True] * tokens_per_image)
            encoding = encoder.backend.encode(chunk, add_special_tokens=False)
            chunk_ids, chunk_offsets = encoding.ids, encoding.offsets
            if c == 0 and reference_compat and chunk_ids and chunk_ids[0] == encoder.bos_id:
                drop = 1
            skip = drop if c > 0 else 0
            for tok, (s, _) in list(zip(chunk_ids, chunk_offsets))[skip:]:
                ids.append(tok)
                at = offset + s
                trained.append(any(a <= at < b for a, b in spans))
                is_image.append(False)
            offset += len(chunk) + len(IMAGE_PLACEHOLDER)
    ids_arr = np.asarray(ids, np.int32) if ids else np.zeros(0, np.int32)
    ids_arr[np.asarray(is_image, np.bool_)] = IMAGE_TOKEN_FILL
    return DocumentLayout(ids_arr, np.asarray(is_image, np.bool_), tuple(starts), np.asarray(trained, np.bool_))


def conversation_document(messages: Any, fmt: str, tokenizer, tokens_per_image: int, *,
                          num_images: int | None = None, reference_compat: bool = False) -> ChatDocument:
    """A training document (ids, image slots, loss mask) of one conversation, or a rejection (layout None).

    messages: the turns; num_images: how many images the record has (None = one per placeholder); tokenizer: from
    load_tokenizer, or a TextEncoder. A conversation whose answers are all cut away later is the pipeline's business.
    """
    encoder = TextEncoder.from_tokenizer(tokenizer)
    try:
        system, turns, counts = normalize_turns(messages, num_images)
        units = render(system, turns, fmt)
    except ConversationError:
        if fmt not in CHAT_FORMATS:
            raise
        return ChatDocument(None, {REJECTED: 1})
    return ChatDocument(_tokenize_units(encoder, units, tokens_per_image, reference_compat), counts)


def generation_prompt(messages: Any, fmt: str, tokenizer, tokens_per_image: int, *, num_images: int | None = None,
                      reference_compat: bool = False, image_separator: str = "\n") -> DocumentLayout:
    """The prompt document for inference: the conversation so far (ending with a user turn) followed by the
    assistant header, as `apply_chat_template(add_generation_prompt=True)`; the k-th image block is the k-th
    `<image>` placeholder. "open_qwen2vl" ends with "<|im_end|>assistant\\n" exactly as its training documents do
    (the original's `get_potential_prompt` rstrips that "\\n", but its evaluation never uses the chat template).
    num_images: the images of the request (None: one per placeholder); images without placeholders go before the
    first user text as in training (`normalize_turns`). Token for token the training document of the same
    conversation up to its first answer token (tests/text/test_contract.py). Raises ConversationError for a
    malformed conversation."""
    encoder = TextEncoder.from_tokenizer(tokenizer)
    system, turns, _ = normalize_turns(messages, num_images, for_generation=True, image_separator=image_separator)
    units = render(system, turns, fmt, add_generation_prompt=True)
    layout = _tokenize_units(encoder, units, tokens_per_image, reference_compat)
    return DocumentLayout(layout.ids, layout.image_mask, layout.image_starts, None)


def check_chat_format(fmt: str, field: str = "data.chat_format") -> str:
    from oq2vl_jax.errors import UserError
    if fmt not in CHAT_FORMATS:
        raise UserError(f"{field} must be one of {CHAT_FORMATS}, got {fmt!r}")
    return fmt
