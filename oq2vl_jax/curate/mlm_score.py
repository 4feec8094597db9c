"""MLM-Filter scores with a model loaded by our inference API (`oq2vl_jax.inference.VLMInference`).

Each sample becomes the original's scoring prompt (curate/mlm_filter.py `prompt_ids`, with the image's slot where
LLaVA puts its image features), the image preprocessed as in training (bicubic squash to the tower's size, as the
original's SigLIP image processor), and is decoded greedily for MAX_NEW_TOKENS tokens; the generated ids are decoded
without special tokens and without stripping (the original parses the raw text). A sample without a readable image
or caption gets a null score text, which the parsing rejects (a recorded failure, not a crash).
"""

from __future__ import annotations

from typing import Callable

from oq2vl_jax.curate import mlm_filter
from oq2vl_jax.data import images as image_lib
from oq2vl_jax.text import documents as tok_lib

_IMAGE_MARK = -1  # stands for the image slot inside prompt_ids; never a real token id


def build_prompt(vlm, caption: str, task: str, image: bytes):
    """(Prompt for `vlm.generate_prompts`, or None when the image is unreadable)."""
    from oq2vl_jax.inference.prompts import Prompt
    enc = vlm.encoder
    ids = mlm_filter.prompt_ids(enc.encode, caption, task, _IMAGE_MARK, enc.encode(" ")[-1])
    if _IMAGE_MARK not in ids:  # the cut at max_len removed the image: nothing to score
        return None
    k = ids.index(_IMAGE_MARK)
    layout = tok_lib.layout([ids[:k], 0, ids[k + 1:]], vlm.config.tokens_per_image)
    try:
        pixels = image_lib.decode_image(image, vlm.config.vision.image_size)[0]
    except image_lib.BadImage:
        return None
    return Prompt(layout, (pixels,))


def inference_generate(vlm, batch_size: int = 64) -> Callable[[list[dict], str], list]:
    """A `generate(samples, task)` for mlm_filter.score_shards backed by a loaded VLMInference."""
    from oq2vl_jax.inference.sampler import SamplingParams
    sampling = SamplingParams(mlm_filter.MAX_NEW_TOKENS, 0.0, 0, 1.0, 0)

    def generate(samples: list[dict], task: str) -> list:
        texts: list = [None] * len(samples)
        prompts = []
        for i, s in enumerate(samples):
            if s["status"] == "success" and s["caption"] is not None and s["image"] is not None:
                prompt = build_prompt(vlm, s["caption"], task, s["image"])
                if prompt is not None:
                    prompts.append((i, prompt))
        for start in range(0, len(prompts), batch_size):
            chunk = prompts[start:start + batch_size]
            for (i, _), gen in zip(chunk, vlm.generate_prompts([p for _, p in chunk], sampling)):
                texts[i] = vlm.tokenizer.decode(list(gen.token_ids), skip_special_tokens=True)
        return texts

    return generate
