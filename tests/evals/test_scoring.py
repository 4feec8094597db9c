"""Extraction edge cases of the scorer libraries, each against the rule stated in its module docstring."""

import random

import pytest

from oq2vl_jax.evals.scorers import choice, mmmu_parse, vqa_norm
from oq2vl_jax.evals.tasks import pope
from oq2vl_jax.evals.tasks.mathvista import edit_distance

OPTIONS = {"A": "red circle", "B": "blue square", "C": "green star", "D": "yellow line"}


@pytest.mark.parametrize("output,want", [
    ("(B)", "B"), ("B.", "B"), ("B", "B"), ("The answer is B", "B"), ("Answer: B", "B"),
    ("**Answer is C**", "C"),  # the "answer is X" rule with markdown
    ("blue square", "B"),  # option text instead of the letter
    ("It is a blue square.", "B"),
    ("b", None),  # lower case alone: no upper-case letter word, no option text
    ("", None), ("I cannot tell", None),  # no answer
    ("A or B", None),  # two letters, no "answer is"
    ("B is right because the A option is a red circle and not a blue square at all", None),  # B not in the last 5
    # VLMEvalKit's can_infer: a refusal and a lone "Z" are no answer, the option-text fallback is not tried
    ("Cannot determine the answer, maybe the blue square", None), ("Z", None), ("Z. blue square", None),
    ("cannot determine the answer, maybe the blue square", "B"),  # its refusal strings match as written
])
def test_extract_letter(output, want):
    assert choice.extract_letter(output, OPTIONS) == want


def test_reference_substring_is_lenient():
    assert choice.reference_substring("A", "I am not sure")  # any "a" matches A (lower-cased test)
    assert choice.reference_substring("b", "(B)")
    assert not choice.reference_substring("A", "a", case_sensitive=True)


@pytest.mark.parametrize("output,official,reference", [
    ("Yes, there is", "yes", "yes, there is"), ("No.", "no", "no"), ("no", "no", "no"), ("Yes.", "yes", "yes"),
    ("There is not a dog.", "no", "there is not a dog"), ("No, there is no dog", "no", "no, there is no dog"),
    ("I see a dog. No cat.", "yes", "i see a dog. no cat"), ("", "yes", ""),
])
def test_pope_labels(output, official, reference):
    assert pope.official_label(output) == official
    assert pope.reference_label(output) == reference


@pytest.mark.parametrize("raw,want", [
    ("The Cat", "cat"), ("an apple", "apple"), ("two", "2"), ("Ten dogs", "10 dogs"), ("none", "0"),
    ("Yes!", "yes"), ("coca-cola", "coca cola"), ("3.5", "3.5"), ("1,000", "1000"), ("dont", "don't"),
    ("it's", "it 's"), ("hello.", "hello"), ("a - b", "b"), ("e.g. this", "eg this"),
])
def test_textvqa_normalisation(raw, want):
    assert vqa_norm.normalize_answer(raw) == want


def test_textvqa_soft_accuracy():
    answers = ["two"] * 3 + ["2"] + ["x"] * 6  # 4 answers normalise to "2"
    assert vqa_norm.soft_accuracy("2", answers) == 1.0
    assert vqa_norm.soft_accuracy("The x.", answers) == 1.0
    # two matches: left-out match -> 1/3 (2 of them), left-out other -> 2/3 (8 of them): (2/3 + 16/3) / 10
    assert vqa_norm.soft_accuracy("y", ["y", "y"] + ["n"] * 8) == pytest.approx(0.6)
    assert vqa_norm.soft_accuracy("z", answers) == 0.0


def test_mmmu_parse_variants():
    letters, opts = ["A", "B", "C", "D"], {"A": "cat", "B": "dog", "C": "bird", "D": "fish"}
    rng = random.Random(0)
    assert mmmu_parse.parse_choice("(C)", letters, opts, rng) == "C"
    assert mmmu_parse.parse_choice("The answer is B.", letters, opts, rng) == "B"
    assert mmmu_parse.parse_choice("B. dog", letters, opts, rng, "harness") == "B"  # the harness's "A." step
    long = "I think that the animal shown here is a dog"
    assert mmmu_parse.parse_choice(long, letters, opts, rng) == "B"  # option text, > 5 words
    assert mmmu_parse.parse_choice("(A) or maybe (C)", letters, opts, rng) == "C"  # the last one
    guesses = {mmmu_parse.parse_choice("no idea", letters, opts, random.Random(s)) for s in range(30)}
    assert guesses == set(letters)  # unparseable: a random guess


def test_mmmu_open():
    assert mmmu_parse.eval_open("12.5", mmmu_parse.parse_open("so the answer is 12.50"))
    assert mmmu_parse.eval_open(["6", "six"], mmmu_parse.parse_open("6"))
    assert mmmu_parse.eval_open("Paris", mmmu_parse.parse_open("The capital is Paris."))
    assert not mmmu_parse.eval_open("B", mmmu_parse.parse_open("about"))  # "b" is padded: no trivial match
    assert mmmu_parse.eval_open("1,000", mmmu_parse.parse_open("x = 1000"))


def test_edit_distance():
    assert edit_distance("kitten", "sitting") == 3 and edit_distance("", "abc") == 3 and edit_distance("a", "a") == 0
