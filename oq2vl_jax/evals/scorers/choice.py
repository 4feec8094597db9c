"""Multiple-choice answer extraction: the strict rule (VLMEvalKit's exact matching) and the original's substring tests.

Strict rule, `extract_letter(output, options)` (VLMEvalKit `vlmeval/utils/matching_util.py` `can_infer`, used with
the `exact_matching` policy, i.e. without an LLM judge):
0. A refusal (one of VLMEvalKit's `reject_to_answer` strings, as written, e.g. "Cannot determine the answer") is no
   answer, and nothing else is tried (`can_infer_option` returns "Z", which `can_infer` does not look past).
1. Replace the characters `.()[],:;!*#{}` by spaces and split into words. If exactly one word is an option letter
   (upper case) and it is among the last five words, that letter is the answer ("(B)", "B.", "B", "The answer is B").
   If no word is an option letter but one is "Z" (VLMEvalKit's "no answer" letter), that is no answer, as 0.
2. Else, "answer is X" / "correct answer is X" (case-insensitive, X in A-D, `**` allowed around it).
3. Else, option text: if the output (lower case) is at most twice the total option text length and contains exactly
   one option's text (lower case), that option is the answer ("a red circle" for option B "red circle").
4. Else no answer: the item counts as wrong (VLMEvalKit returns "Z" under exact matching; no random guess).
A lower-case letter alone ("b") is no answer under this rule; the original's substring test accepts it.
"""

from __future__ import annotations

import re
import string
from typing import Mapping

LETTERS = tuple(string.ascii_uppercase)
_SPLIT_CHARS = ".()[],:;!*#{}"
_ANSWER_IS = re.compile(r"(?i)(?:correct\s+)?answer\s+is\s+\**([ABCD])\**")
_REFUSALS = ("Sorry, I can't help with images of people yet.", "I can't process this file.",
             "I'm sorry, but without the image provided", "Cannot determine the answer")
NO_ANSWER = "Z"  # VLMEvalKit's letter for "the output names no option"


def _letter_by_option(output: str, letters: tuple[str, ...]) -> str | None:
    """An option letter, NO_ANSWER (a refusal or a lone "Z": stop, rule 0), or None (try the option text)."""
    if any(refusal in output for refusal in _REFUSALS):
        return NO_ANSWER
    words = output
    for c in _SPLIT_CHARS:
        words = words.replace(c, " ")
    words = [w.strip() for w in words.split()]
    present = [c for c in letters if c in words]
    if len(present) == 1 and words.index(present[0]) > len(words) - 5:
        return present[0]
    if not present and NO_ANSWER not in letters and NO_ANSWER in words:
        return NO_ANSWER
    m = _ANSWER_IS.search(output)
    if m and m.group(1).upper() in letters:
        return m.group(1).upper()
    return None


def _letter_by_text(output: str, options: Mapping[str, str]) -> str | None:
    low = output.lower()
    if len(low) > 2 * sum(len(str(v)) for v in options.values()):
        return None
    hits = [k for k, v in options.items() if str(v).lower() in low]
    return hits[0] if len(hits) == 1 else None


def extract_letter(output: str, options: Mapping[str, str]) -> str | None:
    """The strict rule above; `options` maps letters to option texts. None when no answer can be read."""
    letter = _letter_by_option(output, tuple(options))
    if letter == NO_ANSWER and NO_ANSWER not in options:
        return None
    return letter or _letter_by_text(output, options)


def options_from(row: Mapping, letters: tuple[str, ...] = LETTERS) -> dict[str, str]:
    """Letter -> text for the option columns present in a row (VLMEvalKit / MMBench style; empty, None and NaN
    cells mean the option does not exist)."""
    out = {}
    for c in letters:
        v = row.get(c)
        if v is None or (isinstance(v, float) and v != v) or str(v).strip() in ("", "nan", "None"):
            continue
        out[c] = str(v)
    return out


def reference_substring(answer: str, output: str, *, case_sensitive: bool = False) -> bool:
    """The original harness's multiple-choice test: the ground-truth string occurs anywhere in the output
    (MMBench, SEED-Bench: lower-cased; MMStar, Mantis: case-sensitive). Any output containing "a" matches A."""
    if case_sensitive:
        return answer in output
    return answer.lower() in output.lower()
