"""Requests -> prompt documents (the training tokenizer and layouts) and images (the training preprocessing).

A request is a dict (or a plain string = text only):

  {"image": SRC} or {"images": [SRC, ...]}   optional; SRC = a file path, encoded bytes, a PIL image or uint8 [H, W, 3]
  {"text": "..."}                            the prompt text, or
  {"messages": [{"role": ..., "content": ...}, ...]}   chat messages (template "chat" only)

Templates:
  base  the pre-training layout `<s> [image] \\n text` (text/documents.py `caption_document` without its caption and
        `<|im_end|>`); several images: `<s> [image] \\n [image] \\n text`; no image: `<s> text`. With an empty text
        the model continues a caption.
  chat  the SFT conversation layout with the generation prompt (`oq2vl_jax.text.chat.generation_prompt`), rendered
        by the checkpoint's prompt contract (text/contract.py: chat format, label mode, image separator): token for
        token the training document of the same conversation up to its answer. Images are placed where the text's
        `<image>` placeholders (or the messages' image parts) are; a request without placeholders gets them before
        the first user text followed by the contract's separator ("<image>\\n{text}"), as the training data.

Images are decoded and squash-resized exactly as in training (`data/images.py`: PIL-exact bicubic to the tower's
size); normalisation happens on device (`models/vlm.py`).
"""

from __future__ import annotations

import dataclasses
import os
from typing import Any, Mapping, Sequence

import numpy as np

from oq2vl_jax.data import images as image_lib
from oq2vl_jax.errors import UserError
from oq2vl_jax.text import documents as tok_lib
from oq2vl_jax.text.contract import PromptContract, TRAINED_DEFAULT

TEMPLATES = ("base", "chat")


@dataclasses.dataclass(frozen=True)
class Prompt:
    """One request ready for the model: its token layout and its preprocessed images (uint8 [S, S, 3] each)."""
    document: tok_lib.DocumentLayout
    images: tuple[np.ndarray, ...]

    @property
    def length(self) -> int:
        return self.document.length


def load_image(src: Any, image_size: int, where: str = "image") -> np.ndarray:
    """A path / bytes / PIL image / uint8 array -> uint8 [image_size, image_size, 3] (training's squash resize)."""
    try:
        if isinstance(src, (str, os.PathLike)):
            path = os.fspath(src)
            if not os.path.isfile(path):
                raise UserError(f"{where}: image file '{path}' does not exist")
            with open(path, "rb") as f:
                return image_lib.decode_image(f.read(), image_size)[0]
        if isinstance(src, (bytes, bytearray)):
            return image_lib.decode_image(bytes(src), image_size)[0]
        if isinstance(src, np.ndarray):
            if src.dtype != np.uint8 or src.ndim != 3 or src.shape[-1] != 3:
                raise UserError(f"{where}: an image array must be uint8 [H, W, 3], got {src.dtype} {src.shape}")
            if src.shape[:2] == (image_size, image_size):
                return src
            return image_lib.resize(np.ascontiguousarray(src), image_size)
        if hasattr(src, "convert") and hasattr(src, "size"):  # a PIL image
            rgb, _ = image_lib.to_rgb(src)
            return image_lib.resize(np.asarray(rgb), image_size)
    except image_lib.BadImage as e:
        raise UserError(f"{where}: cannot use the image ({e})") from e
    raise UserError(f"{where}: unsupported image {type(src).__name__}; pass a path, bytes, a PIL image or uint8 "
                    "[H, W, 3]")


def _request_images(request: Mapping) -> list:
    if "image" in request and "images" in request:
        raise UserError("a request has both 'image' and 'images'; use one")
    if request.get("image") is not None:
        return [request["image"]]
    value = request.get("images") or []
    if not isinstance(value, (list, tuple)):
        raise UserError("'images' must be a list of images")
    return list(value)


def base_document(encoder: tok_lib.TextEncoder, text: str, num_images: int,
                  tokens_per_image: int) -> tok_lib.DocumentLayout:
    """`<s>` [image] \n [image] \n ... text: the pre-training layout without the caption's end token."""
    parts: list = []
    for k in range(num_images):
        parts += ["\n", k] if k else [k]
    parts.append(("\n" + text) if num_images else text)
    return tok_lib.prompt_document(encoder, parts, tokens_per_image)


def chat_messages(request: Mapping) -> list[dict]:
    """The request as chat messages: its `messages`, or one user turn with its `text`."""
    if "messages" in request:
        messages = request["messages"]
        if (not isinstance(messages, (list, tuple)) or not messages
                or not all(isinstance(m, Mapping) and "role" in m and "content" in m for m in messages)):
            raise UserError("'messages' must be a non-empty list of {'role': ..., 'content': ...}")
        return [dict(m) for m in messages]
    return [{"role": "user", "content": str(request.get("text", ""))}]


def chat_document(encoder: tok_lib.TextEncoder, messages: list[dict], tokens_per_image: int, num_images: int,
                  contract: PromptContract = TRAINED_DEFAULT, where: str = "request") -> tok_lib.DocumentLayout:
    from oq2vl_jax.text import chat

    chat.check_chat_format(contract.chat_format, "chat_format")
    try:
        return chat.generation_prompt(messages, contract.chat_format, encoder, tokens_per_image,
                                      num_images=num_images, reference_compat=contract.reference_compat,
                                      image_separator=contract.image_separator)
    except chat.ConversationError as e:
        raise UserError(f"{where}: {e}") from e


def describe(document: tok_lib.DocumentLayout, decode) -> str:
    """The prompt as the model sees it: decoded text with each image block written `<image:N tokens>`."""
    out, pos = [], 0
    n = document.length
    for start in document.image_starts:
        out.append(decode(document.ids[pos:start].tolist()))
        end = start
        while end < n and document.image_mask[end]:
            end += 1
        out.append(f"<image:{end - start} tokens>")
        pos = end
    out.append(decode(document.ids[pos:].tolist()))
    return "".join(out)


def build_prompt(request: Any, encoder: tok_lib.TextEncoder, *, template: str, tokens_per_image: int,
                 image_size: int, contract: PromptContract = TRAINED_DEFAULT, where: str = "request") -> Prompt:
    if template not in TEMPLATES:
        raise UserError(f"unknown template '{template}'; choose one of {TEMPLATES}")
    if isinstance(request, str):
        request = {"text": request}
    if not isinstance(request, Mapping):
        raise UserError(f"{where}: a request must be a string or a dict with 'text'/'messages' and 'image(s)'")
    unknown = set(request) - {"image", "images", "text", "messages", "id"}
    if unknown:
        raise UserError(f"{where}: unknown request keys {sorted(unknown)} (use image, images, text, messages, id)")
    sources = _request_images(request)
    pixels = tuple(load_image(s, image_size, f"{where} image {i}") for i, s in enumerate(sources))
    if template == "base":
        if "messages" in request:
            raise UserError(f"{where}: 'messages' needs --template chat; the base template takes 'text'")
        doc = base_document(encoder, str(request.get("text", "")), len(pixels), tokens_per_image)
    else:
        doc = chat_document(encoder, chat_messages(request), tokens_per_image, len(pixels), contract, where)
    if doc.num_images != len(pixels):
        raise UserError(f"{where}: the prompt has {doc.num_images} image slot(s) for {len(pixels)} image(s)")
    return Prompt(doc, pixels)
