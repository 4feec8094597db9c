import pickle

import numpy as np

from fixtures.data import tiny_tokenizer, tiny_tokenizer_dir  # noqa: F401  (fixtures)
from oq2vl_jax.text.documents import (DocumentLayout, TextEncoder, caption_document, interleaved_document,
                                      prompt_document, truncate_document)


def test_caption_document_layout(tiny_tokenizer):
    tok = tiny_tokenizer
    caption = "a blue square in the center"
    doc = caption_document(tok, caption, tokens_per_image=5)
    text_ids = tok("\n" + caption, add_special_tokens=False)["input_ids"]
    expected = [tok.bos_token_id] + [0] * 5 + text_ids + [tok.convert_tokens_to_ids("<|im_end|>")]
    assert doc.ids.dtype == np.int32 and doc.ids.tolist() == expected
    assert doc.image_mask.tolist() == [False] + [True] * 5 + [False] * (len(text_ids) + 1)
    assert doc.image_starts == (1,) and doc.length == 7 + len(text_ids) and doc.num_images == 1
    # nothing dropped after the image (the reference's tokenizer_image_token bug): the text decodes back whole
    assert tok.decode(doc.ids[6:-1].tolist()) == "\n" + caption


def test_image_placeholder_in_caption_is_escaped(tiny_tokenizer):
    doc = caption_document(tiny_tokenizer, "look <image> here", 2)
    assert tiny_tokenizer.decode(doc.ids[3:-1].tolist()) == "\nlook <image-placeholder> here"


def test_interleaved_document(tiny_tokenizer):
    tok = tiny_tokenizer
    enc = TextEncoder.from_tokenizer(tok)
    single = interleaved_document(tok, [("image", b""), ("text", "a red star")], 3)
    np.testing.assert_array_equal(single.ids, caption_document(tok, "a red star", 3).ids)
    doc = interleaved_document(tok, [("text", "first"), ("image", b""), ("text", "second"), ("image", b"")], 3)
    chunk = "<|endofchunk|>"
    expected = ([enc.bos_id] + enc.encode("first" + chunk) + [0] * 3 + enc.encode("\nsecond" + chunk) + [0] * 3
                + enc.encode("\n") + [enc.eos_id])
    assert doc.ids.tolist() == expected
    assert doc.num_images == 2 and doc.image_mask.sum() == 6
    assert all(doc.image_mask[s:s + 3].all() for s in doc.image_starts)


def test_truncate_document_never_cuts_an_image_block():
    ids = np.arange(20, dtype=np.int32)
    mask = np.zeros(20, bool)
    mask[2:6] = True
    mask[10:14] = True
    doc = DocumentLayout(ids, mask, (2, 10), np.ones(20, bool))
    assert truncate_document(doc, 25, 4) is doc
    cut = truncate_document(doc, 17, 4)  # cut in text after both images
    assert cut.length == 17 and cut.image_starts == (2, 10) and cut.target_mask.shape == (17,)
    inside = truncate_document(doc, 12, 4)  # cut inside the second block: the block goes
    assert inside.length == 10 and inside.image_starts == (2,) and not inside.image_mask[6:].any()
    edge = truncate_document(doc, 14, 4)  # cut right after a complete block keeps it
    assert edge.length == 14 and edge.image_starts == (2, 10)


def test_text_encoder_pickles_and_matches_hf(tiny_tokenizer):
    enc = pickle.loads(pickle.dumps(TextEncoder.from_tokenizer(tiny_tokenizer)))
    text = "\nthere is a purple diamond at the bottom right<|im_end|>"
    assert enc.encode(text) == tiny_tokenizer(text, add_special_tokens=False)["input_ids"]
    assert enc.vocab_size == len(tiny_tokenizer)
    assert enc.bos_id == tiny_tokenizer.bos_token_id and enc.eos_id == tiny_tokenizer.eos_token_id


def test_a_base_prompt_is_a_caption_document_without_its_end(tiny_tokenizer):
    """What pre-training saw is what a base prompt sends: `<s> [image] \n text`, the text tokenized on its own,
    `<image>` in it escaped, no end token; the inference API and the evaluation build theirs with prompt_document."""
    enc = TextEncoder.from_tokenizer(tiny_tokenizer)
    caption = caption_document(enc, "a red <image> circle", 4)
    prompt = prompt_document(enc, [0, "\na red <image> circle"], 4)
    np.testing.assert_array_equal(prompt.ids, caption.ids[:-1])
    np.testing.assert_array_equal(prompt.image_mask, caption.image_mask[:-1])
    assert prompt.image_starts == caption.image_starts == (1,)
    assert caption.ids[-1] == enc.eos_id

