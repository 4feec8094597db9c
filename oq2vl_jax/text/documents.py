"""The token layout of one document, as the reference builds it (docs/reference_notes.md §3).

The tokenizer itself (special tokens, `load_tokenizer`) is text/tokens.py. A caption document is

    <s> [image x T_img] \n caption <|im_end|>

i.e. ids = [bos] + T_img image positions + tok("\n" + caption) + [im_end], nothing dropped (the reference's
`tokenizer_image_token` bug, docs/reference_notes.md §10 Q2, is deliberately not reproduced).

`TextEncoder` is the small picklable part the pipeline ships to Grain workers: the `tokenizers` backend plus the
special ids, so worker processes never import transformers.
"""

from __future__ import annotations

from typing import NamedTuple, Sequence

import numpy as np

from oq2vl_jax.errors import UserError
from oq2vl_jax.text.tokens import BOS_TOKEN, ENDOFCHUNK_TOKEN, EOS_TOKEN, IMAGE_TOKEN, IMAGE_TOKEN_ESCAPED, PAD_TOKEN

IMAGE_TOKEN_FILL = 0  # input id stored at image positions (overwritten by image embeddings)


class TextEncoder:
    """Picklable text -> ids encoder with the special ids the document layout needs."""

    def __init__(self, backend, *, bos_id: int, eos_id: int, pad_id: int, endofchunk_id: int, vocab_size: int):
        self.backend = backend  # a tokenizers.Tokenizer (picklable, Rust)
        self.bos_id, self.eos_id, self.pad_id = bos_id, eos_id, pad_id
        self.endofchunk_id, self.vocab_size = endofchunk_id, vocab_size

    @classmethod
    def from_tokenizer(cls, tokenizer) -> "TextEncoder":
        if isinstance(tokenizer, TextEncoder):
            return tokenizer
        ids = {t: tokenizer.convert_tokens_to_ids(t) for t in (BOS_TOKEN, EOS_TOKEN, PAD_TOKEN, ENDOFCHUNK_TOKEN)}
        missing = [t for t, i in ids.items() if i is None or i == tokenizer.unk_token_id]
        if missing:
            raise UserError(f"tokenizer lacks {missing}; load it with oq2vl_jax.text.tokens.load_tokenizer")
        return cls(tokenizer.backend_tokenizer, bos_id=ids[BOS_TOKEN], eos_id=ids[EOS_TOKEN], pad_id=ids[PAD_TOKEN],
                   endofchunk_id=ids[ENDOFCHUNK_TOKEN], vocab_size=len(tokenizer))

    def encode(self, text: str) -> list[int]:
        """Plain encoding: no BOS/EOS added; special-token strings in the text are matched (as the HF tokenizer)."""
        return self.backend.encode(text, add_special_tokens=False).ids


class DocumentLayout(NamedTuple):
    """One document: token ids (0 at image positions), which positions are images, where each image block starts.

    `target_mask` (optional, bool [n]) marks the positions that may be predicted (SFT formatters mask prompts with
    it); None means every text position of the document may be a target.
    """
    ids: np.ndarray            # int32 [n]
    image_mask: np.ndarray     # bool [n]
    image_starts: tuple[int, ...]
    target_mask: np.ndarray | None = None

    @property
    def length(self) -> int:
        return int(self.ids.shape[0])

    @property
    def num_images(self) -> int:
        return len(self.image_starts)


def layout(pieces: Sequence[list[int] | int], tokens_per_image: int) -> DocumentLayout:
    """A document from its pieces in order: lists of text ids, or an int k = the k-th image block (`tokens_per_image`
    positions holding IMAGE_TOKEN_FILL, marked in image_mask). Every document kind (captions, interleaved, chat, the
    inference and evaluation prompts) is laid out here."""
    total = sum(tokens_per_image if isinstance(p, int) else len(p) for p in pieces)
    ids = np.full(total, IMAGE_TOKEN_FILL, np.int32)
    image_mask = np.zeros(total, np.bool_)
    starts, pos = [], 0
    for piece in pieces:
        if isinstance(piece, int):
            image_mask[pos:pos + tokens_per_image] = True
            starts.append(pos)
            pos += tokens_per_image
        else:
            ids[pos:pos + len(piece)] = piece
            pos += len(piece)
    return DocumentLayout(ids, image_mask, tuple(starts))


def escape_image_token(text: str) -> str:
    """Text as the reference tokenizes it: a literal `<image>` in data is not an image slot."""
    return text.replace(IMAGE_TOKEN, IMAGE_TOKEN_ESCAPED)  # the reference escapes `<image>` in captions


def caption_document(tokenizer, caption: str, tokens_per_image: int) -> DocumentLayout:
    """`<s> [image x T] \\n caption <|im_end|>`. `tokenizer`: from load_tokenizer, or a TextEncoder."""
    enc = TextEncoder.from_tokenizer(tokenizer)
    return layout([[enc.bos_id], 0, enc.encode("\n" + escape_image_token(caption)) + [enc.eos_id]], tokens_per_image)


def interleaved_document(tokenizer, parts: Sequence[tuple[str, object]], tokens_per_image: int) -> DocumentLayout:
    """Interleaved image/text document as the reference's JSON training path builds it (reference_notes.md §3).

    parts: ("image", anything) / ("text", str) in document order. Each image becomes an image block followed by
    "\\n"; each text segment gets `<|endofchunk|>` appended when the document has >= 2 images. A caption document is
    the special case [image, text].
    """
    enc = TextEncoder.from_tokenizer(tokenizer)
    n_images = sum(kind == "image" for kind, _ in parts)
    suffix = ENDOFCHUNK_TOKEN if n_images >= 2 else ""
    pieces: list[list[int] | int] = [[enc.bos_id]]
    text, image_index = "", 0
    for kind, value in parts:
        if kind == "image":
            if text:
                pieces.append(enc.encode(text))
            pieces.append(image_index)
            image_index += 1
            text = "\n"
        else:
            text += escape_image_token(str(value)) + suffix
    pieces.append((enc.encode(text) if text else []) + [enc.eos_id])
    return layout(pieces, tokens_per_image)


def prompt_document(tokenizer, parts: Sequence[str | int], tokens_per_image: int) -> DocumentLayout:
    """A base-model prompt: `<s>`, then `parts` in order, each text tokenized on its own (with `<image>` escaped, as
    the original's `tokenizer_image_token` splits at image markers) and each int k the k-th image block; no end token
    (generation continues it). The inference API's base prompts and the evaluation's base requests are built here."""
    enc = TextEncoder.from_tokenizer(tokenizer)
    pieces: list[list[int] | int] = [[enc.bos_id]]
    for part in parts:
        if isinstance(part, int):
            pieces.append(part)
        elif part:
            pieces.append(enc.encode(escape_image_token(part)))
    return layout(pieces, tokens_per_image)


def truncate_document(doc: DocumentLayout, max_length: int, tokens_per_image: int) -> DocumentLayout:
    """Cuts a document to at most max_length positions, never through an image block (a cut block is dropped)."""
    if doc.length <= max_length:
        return doc
    cut = max_length
    for start in doc.image_starts:
        if start < cut < start + tokens_per_image:
            cut = start
    starts = tuple(s for s in doc.image_starts if s + tokens_per_image <= cut)
    target = None if doc.target_mask is None else doc.target_mask[:cut]
    return DocumentLayout(doc.ids[:cut], doc.image_mask[:cut], starts, target)
