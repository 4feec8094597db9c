"""MLM-Filter prompts and score parsing as the original (MLM_Filter batch inference v2 + LLaVA-Unified qwen_instruct
conversation + tokenizer_image_token; Open-Qwen2VL apply_filter.py). The original's strings and functions are
restated here from its sources, independently of oq2vl_jax.curate.mlm_filter."""

import os

import pyarrow.parquet as pq
import pytest

from fixtures.curate import uid_of, write_datacomp_shards
from fixtures.data import tiny_tokenizer, tiny_tokenizer_dir  # noqa: F401
from oq2vl_jax.curate import mlm_filter, select, shards as shards_lib

TEMPLATE = """Text Caption: {caption}

{criteria} A higher score indicates higher level of {aspect}. Ensure that your scoring is nuanced and uses the entire range from 0 to 100, reflecting the subtle differences. The score should be given as an integer, with each number between 0 and 100 considered as a potential score, avoiding the tendency to round to multiples of 5 or 10. Please first output a single line containing the value indicating the scores. In the subsequent line, please provide a comprehensive explanation of your evaluation, avoiding any potential bias."""  # noqa: E501
CRITERIA = {
    "image_text_matching": "Please evaluate if the provided text caption accurately represents the main features and objects of the image. The caption doesn't need to detail every aspect of the image, but it should capture its primary theme. Rate the overall quality of the text caption's match to the image on a scale of 1-100, considering the criteria mentioned.",  # noqa: E501
    "object_detail_fulfillment": "Please evaluate the text caption to determine if it provides detailed descriptions of objects that align with the image. Specifically, assess if the caption sufficiently describes the color, size, position, shape, material, etc., of the objects. Afterward, rate the caption's overall accuracy in capturing object details from the image on a scale of 1-100, based on the criteria provided.",  # noqa: E501
    "caption_text_quality": "Please evaluate the text caption based on the following criteria: Grammatical Correctness, Diversity of Vocabulary (e.g., the range and uniqueness of words used), Fluency (e.g., smoothness and natural flow of sentences), Readability, Length, and Structure. Assign an overall quality score on a scale of 1-100.",  # noqa: E501
    "semantic_understanding": """Evaluate the given text caption in relation to its corresponding image. Your goal is to determine if the text caption provides additional semantic information that isn't readily apparent just from the image itself.

For example:

1. If the image mentions "a man" but the caption elaborates he is a "homeless man" or a "businessman," then the caption is enriching the semantic context.
2. If the caption introduces concepts like the mathematical tangent function, which require in-depth knowledge to deduce, it is imparting external semantics.
3. Captions revealing specific location addresses, festival details, or other nuanced data not easy to infer from the image also provide external semantic information.
4. Directly identifying specific entities in the image such as buildings, people, bird species, animal breeds, car models, engines, etc., in the caption introduces additional insights.
5. Should the image act as a contextual backdrop and the caption describes elements not explicitly showcased in the image, it has semantic depth.
6. Lastly, if the caption depicts relationships between the subjects in the image, which need commonsense knowledge to understand, it should be considered semantically rich.

Please assess and determine the extent of semantic enrichment the caption provides over the image. Rate the text caption's semantic depth on a scale from 1 to 100.""",  # noqa: E501
}
IMAGE_TOKEN_INDEX = -200


def original_prompt_ids(tok, caption, task, max_len=2040):
    text = "<image>" + "\n" + TEMPLATE.format(caption=caption, criteria=CRITERIA[task], aspect=task.replace("_", " "))
    system, sep = "<|im_start|>system\nYou are a helpful assistant", "<|im_end|>"
    roles = ("<|im_start|>user\n", "<|im_start|>assistant\n")
    prompt = system + sep + roles[0] + text + sep + roles[1]  # SeparatorStyle.MPT, second message None
    chunks = [tok(c).input_ids for c in prompt.split("<image>")]
    ids, offset = [], 0
    if chunks and chunks[0] and chunks[0][0] == tok.bos_token_id:
        offset = 1
        ids.append(chunks[0][0])
    seps = [x for pair in zip(chunks, [[IMAGE_TOKEN_INDEX] * (offset + 1)] * len(chunks)) for x in pair][:-1]
    for x in seps:
        ids.extend(x[offset:])
    return ids[:max_len] + [tok(" ")["input_ids"][-1]]


def original_above_threshold(text, threshold):
    if "\n" in text:
        text = text.split("\n")[0]
    text = text.strip(",").strip(";")
    try:
        return int(text) >= threshold
    except ValueError:
        return False


@pytest.mark.parametrize("task", list(CRITERIA))
def test_prompt_ids_equal_the_original(tiny_tokenizer, task):
    tok = tiny_tokenizer
    encode = lambda s: tok(s).input_ids  # noqa: E731
    space = tok(" ")["input_ids"][-1]
    for caption in ("a red circle at the top left", "Ünïcode, \"quotes\" & <tags>\nsecond line", ""):
        ours = mlm_filter.prompt_ids(encode, caption, task, IMAGE_TOKEN_INDEX, space)
        assert ours == original_prompt_ids(tok, caption, task)
        assert ours.count(IMAGE_TOKEN_INDEX) == 1 and ours[-1] == space
    long = mlm_filter.prompt_ids(encode, "word " * 3000, task, IMAGE_TOKEN_INDEX, space)
    assert long == original_prompt_ids(tok, "word " * 3000, task) and len(long) == 2041


CASES = {"85": 85, "85,": 85, "90\nThe caption is good": 90, " 86 ": 86, ";85;": 85, ",;85": 85, ";,85": None,
         "junk": None, "": None, "85.5": None, "8 5": None, "\n85": None, None: None}


def test_parsing_as_the_original():
    for text, want in CASES.items():
        assert mlm_filter.parse_score(text) == want, repr(text)
        if text is not None:
            assert (want is not None and want >= 85) == original_above_threshold(text, 85), repr(text)
    scores, ok = mlm_filter.parse_scores(list(CASES))
    assert ok.tolist() == [v is not None for v in CASES.values()]


def test_score_tables_in_the_original_layout_feed_select(tmp_path):
    root = write_datacomp_shards(str(tmp_path / "dc"))
    out = str(tmp_path / "mlm")
    answers = {0: "90", 1: "85,", 2: "junk", 7: "86\nfine"}

    def fake_generate(samples, task):  # stands in for the model: a fixed answer per sample number
        return [answers.get(int(s["caption"].split()[1]), "10") for s in samples]

    counts = mlm_filter.score_shards(fake_generate, root, out, tasks=("semantic_understanding",))
    assert counts == {"written": 2, "skipped_existing": 0, "samples": 10, "unparsed": 1}
    assert sorted(os.listdir(out)) == ["00000000_semantic_understanding.parquet",
                                       "00000001_semantic_understanding.parquet"]
    table = pq.read_table(os.path.join(out, "00000000_semantic_understanding.parquet")).to_pydict()
    assert table["uid"][:2] == [uid_of(0), uid_of(1)] and table["semantic_understanding_score"][:3] == ["90", "85,", "junk"]
    assert {"original_width", "status", "caption"} <= set(table)
    assert mlm_filter.score_shards(fake_generate, root, out, tasks=("semantic_understanding",))["skipped_existing"] == 2
    tables = str(tmp_path / "t")
    shards_lib.write_key_tables(root, tables)
    rule = {"mlm": out, "task": "semantic_understanding", "min": 85}
    sel = str(tmp_path / "s.npz")
    assert select.select(root, tables, rule, sel)["selected"] == 3  # samples 0, 1, 7


def test_mlm_cli_rejects_unknown_task_before_loading(tmp_path, capsys):
    from oq2vl_jax.curate.__main__ import main
    assert main(["mlm", "--ckpt", str(tmp_path), "--shards", str(tmp_path), "--out", str(tmp_path / "o"),
                 "--tasks", "semantic_understanding,bogus"]) == 2
    assert "bogus" in capsys.readouterr().err
