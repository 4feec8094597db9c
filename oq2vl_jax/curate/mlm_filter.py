"""MLM-Filter quality scores: the four metrics' prompts and the original's parsing of the generated score.

Prompt (MLM_Filter `mlm_filter_scoring_datacomp_batch_inference_v2.py`, Qwen2.5 filters): the instruction template
filled with the caption, the metric's criterion and its aspect (the task name with spaces), prefixed by
"<image>\\n", inside LLaVA-Unified's `qwen_instruct` conversation (MPT separator style, no newline after
`<|im_end|>`):

    <|im_start|>system\\nYou are a helpful assistant<|im_end|><|im_start|>user\\n<image>\\n{instruction}<|im_end|>
    <|im_start|>assistant\\n

tokenized as LLaVA's `tokenizer_image_token` does (each side of "<image>" tokenized on its own, the image
placeholder between), cut to `max_len` tokens (2040), then one space token appended (`tokenizer(" ").input_ids[-1]`;
the original adds it "to decrease the decoding cost"). Generation: greedy, 2 new tokens for Qwen filters (Qwen2
tokenizes digits one by one, so a generated "100" reads "10"), decoded without special tokens.

Parsing (`data_filtering/baselines/apply_filter.py` `above_threshold_decision`): the text up to its first newline,
"," then ";" stripped from both ends, Python `int()` (which also accepts surrounding whitespace and a sign); any
failure is a rejected sample (recorded here as parsed=False, never a crash).
"""

from __future__ import annotations

from typing import Callable, Sequence

import numpy as np

INSTRUCTION_TEMPLATE = (
    "Text Caption: {caption}\n\n{criteria} A higher score indicates higher level of {aspect}. Ensure that your "
    "scoring is nuanced and uses the entire range from 0 to 100, reflecting the subtle differences. The score should "
    "be given as an integer, with each number between 0 and 100 considered as a potential score, avoiding the "
    "tendency to round to multiples of 5 or 10. Please first output a single line containing the value indicating "
    "the scores. In the subsequent line, please provide a comprehensive explanation of your evaluation, avoiding any "
    "potential bias.")

TASKS = {
    "image_text_matching": (
        "Please evaluate if the provided text caption accurately represents the main features and objects of the "
        "image. The caption doesn't need to detail every aspect of the image, but it should capture its primary "
        "theme. Rate the overall quality of the text caption's match to the image on a scale of 1-100, considering "
        "the criteria mentioned."),
    "object_detail_fulfillment": (
        "Please evaluate the text caption to determine if it provides detailed descriptions of objects that align "
        "with the image. Specifically, assess if the caption sufficiently describes the color, size, position, "
        "shape, material, etc., of the objects. Afterward, rate the caption's overall accuracy in capturing object "
        "details from the image on a scale of 1-100, based on the criteria provided."),
    "caption_text_quality": (
        "Please evaluate the text caption based on the following criteria: Grammatical Correctness, Diversity of "
        "Vocabulary (e.g., the range and uniqueness of words used), Fluency (e.g., smoothness and natural flow of "
        "sentences), Readability, Length, and Structure. Assign an overall quality score on a scale of 1-100."),
    "semantic_understanding": (
        "Evaluate the given text caption in relation to its corresponding image. Your goal is to determine if the "
        "text caption provides additional semantic information that isn't readily apparent just from the image "
        "itself.\n\nFor example:\n\n"
        "1. If the image mentions \"a man\" but the caption elaborates he is a \"homeless man\" or a \"businessman,\" "
        "then the caption is enriching the semantic context.\n"
        "2. If the caption introduces concepts like the mathematical tangent function, which require in-depth "
        "knowledge to deduce, it is imparting external semantics.\n"
        "3. Captions revealing specific location addresses, festival details, or other nuanced data not easy to "
        "infer from the image also provide external semantic information.\n"
        "4. Directly identifying specific entities in the image such as buildings, people, bird species, animal "
        "breeds, car models, engines, etc., in the caption introduces additional insights.\n"
        "5. Should the image act as a contextual backdrop and the caption describes elements not explicitly "
        "showcased in the image, it has semantic depth.\n"
        "6. Lastly, if the caption depicts relationships between the subjects in the image, which need commonsense "
        "knowledge to understand, it should be considered semantically rich.\n\n"
        "Please assess and determine the extent of semantic enrichment the caption provides over the image. Rate "
        "the text caption's semantic depth on a scale from 1 to 100."),
}

IMAGE_PLACEHOLDER = "<image>"
SYSTEM = "<|im_start|>system\nYou are a helpful assistant"
USER, ASSISTANT, SEP = "<|im_start|>user\n", "<|im_start|>assistant\n", "<|im_end|>"
MAX_PROMPT_TOKENS = 2040  # the original's --max-len
MAX_NEW_TOKENS = 2  # the original's choice for Qwen filters
SCORE_COLUMN = "{task}_score"
TABLE_NAME = "{shard:08d}_{task}.parquet"


def prompt_text(caption: str, task: str) -> str:
    instruction = INSTRUCTION_TEMPLATE.format(caption=caption, criteria=TASKS[task], aspect=task.replace("_", " "))
    return SYSTEM + SEP + USER + IMAGE_PLACEHOLDER + "\n" + instruction + SEP + ASSISTANT


def prompt_ids(encode: Callable[[str], list[int]], caption: str, task: str, image_id: int,
               space_id: int, max_len: int = MAX_PROMPT_TOKENS) -> list[int]:
    """Token ids of one scoring prompt: `encode` is the tokenizer without added special tokens (Qwen2 adds none),
    `image_id` stands where the image goes, `space_id` is the appended space token."""
    chunks = [encode(chunk) for chunk in prompt_text(caption, task).split(IMAGE_PLACEHOLDER)]
    ids: list[int] = []
    for i, chunk in enumerate(chunks):
        if i:
            ids.append(image_id)
        ids.extend(chunk)
    return ids[:max_len] + [space_id]


def parse_score(text) -> int | None:
    """The original's parsing of a generated score; None where it rejects the sample."""
    if not isinstance(text, str):
        return None
    if "\n" in text:
        text = text.split("\n")[0]
    text = text.strip(",").strip(";")
    try:
        return int(text)
    except ValueError:
        return None


def whole_text_is_int(text) -> bool:
    """The original's `interger_decision` (the population of its top-fraction threshold): int() of the raw text."""
    try:
        int(text)
        return True
    except (TypeError, ValueError):
        return False


def parse_scores(texts: Sequence) -> tuple[np.ndarray, np.ndarray]:
    """(scores float64 with NaN where unparsed, parsed mask)."""
    parsed = [parse_score(t) for t in texts]
    ok = np.array([p is not None for p in parsed], bool)
    return np.array([float(p) if p is not None else np.nan for p in parsed], np.float64), ok


def table_columns(samples: list[dict], texts: list[str], task: str) -> dict[str, list]:
    """The original's per-shard table: every field of each sample's json (uid, caption, original_width, status,
    ...; missing fields null) plus `{task}_score` with the generated text, unparsed (parsing happens at selection,
    as in the original)."""
    fields: list[str] = []
    for s in samples:
        fields += [k for k in s["json"] if k not in fields]
    columns = {k: [s["json"].get(k) for s in samples] for k in fields}
    columns.setdefault("uid", [s["uid"] for s in samples])
    columns["key"] = [s["key"] for s in samples]
    columns[SCORE_COLUMN.format(task=task)] = list(texts)
    return columns


def score_shards(generate: Callable[[list[dict], str], list[str]], shards_pattern: str, out_dir: str,
                 tasks: Sequence[str] = tuple(TASKS)) -> dict:
    """Writes `{out}/{8 digits}_{task}.parquet` for every `{8 digits}.tar` shard and task, skipping tables that
    exist (the original's resume rule). `generate(samples, task)` returns one decoded text per sample: the model
    call (prompt building with `prompt_ids`, greedy decoding of MAX_NEW_TOKENS tokens) lives with the caller."""
    import os
    import re
    import time
    from absl import logging
    from oq2vl_jax.curate import shards as shards_lib
    from oq2vl_jax.errors import UserError
    unknown = [t for t in tasks if t not in TASKS]
    if unknown:
        raise UserError(f"unknown MLM-Filter task(s) {unknown}; choose from {list(TASKS)}")
    root, shards = shards_lib.list_shards(shards_pattern)
    counts = {"written": 0, "skipped_existing": 0, "samples": 0, "unparsed": 0}
    start = time.time()
    for task in tasks:
        for shard in shards:
            match = re.fullmatch(r"(\d{8})\.tar", os.path.basename(shard))
            if match is None:
                raise UserError(f"shard '{shard}': the MLM-Filter layout names tables after {{8 digits}}.tar shards")
            path = os.path.join(out_dir, os.path.dirname(shard), TABLE_NAME.format(shard=int(match[1]), task=task))
            if os.path.exists(path):
                counts["skipped_existing"] += 1
                continue
            samples = list(shards_lib.iter_samples(os.path.join(root, shard)))
            texts = generate(samples, task)
            shards_lib.write_table(path, table_columns(samples, texts, task), [])
            counts["written"] += 1
            counts["samples"] += len(samples)
            counts["unparsed"] += int((~parse_scores(texts)[1]).sum())
            logging.info("curate mlm: %s %s: %d samples (%.1f samples/s overall)", task, shard, len(samples),
                         counts["samples"] / max(time.time() - start, 1e-9))
    return counts
