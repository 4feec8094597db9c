"""MMMU's response parsing (MMMU-Benchmark/MMMU `mmmu/utils/eval_utils.py`), used by MMMU and by the original
harness's MathVista scorer.

- `parse_choice(response, letters, options, rng, variant)`: multiple choice. "official" is the MMMU repository's rule:
  strip `,.!?;:'` at the ends, pad with spaces, then candidates "(A)"; else " A "; else, for responses of more than
  five words, option texts; none -> `rng.choice(letters)` (seeded here; the official module seeds `random` with 42 at
  import, the original harness never seeds). Several candidates -> the one that occurs last. "harness" is the copy in
  the original harness (`vlm-evaluation/vlm_eval/tasks/harnesses/mmmu.py`, also lmms-eval): "A " without the leading
  space, plus an "A." step before the option-text step.
- `parse_open(response)` and `eval_open(gold, preds)`: open answers: key sub-responses after indicator words
  ("is ", "so ", "answer ", "=" in the last sentence ...), numbers extracted from them, everything normalised
  (numbers -> float rounded to 2 places, strings lower case, a one-character string padded to " x"/"x " to avoid
  trivial matches); correct if a normalised gold string occurs in a predicted string or a gold number equals a
  predicted number.
"""

from __future__ import annotations

import random
import re
from typing import Mapping, Sequence

_STRIP = (",", ".", "!", "?", ";", ":", "'")
_INDICATORS = ("could be ", "so ", "is ", "thus ", "therefore ", "final ", "answer ", "result ")


def parse_choice(response: str, letters: Sequence[str], options: Mapping[str, str], rng: random.Random,
                 variant: str = "official") -> str:
    for ch in _STRIP:
        response = response.strip(ch)
    response = " " + response + " "
    by_letter, bracketed = True, False
    cands = [c for c in letters if f"({c})" in response]
    bracketed = bool(cands)
    if not cands:
        pattern = " {} " if variant == "official" else "{} "
        cands = [c for c in letters if pattern.format(c) in response]
    if not cands and variant == "harness":
        cands = [c for c in letters if f"{c}." in response]
    if not cands and len(response.split()) > 5:
        cands = [c for c in letters if options[c].lower() in response.lower()]
        by_letter = not cands
    if not cands:
        return rng.choice(list(letters))
    if len(cands) == 1:
        return cands[0]
    if not by_letter:
        starts = [response.lower().rfind(options[c].lower()) for c in cands]
    elif bracketed:
        starts = [response.rfind(f"({c})") for c in cands]
    else:
        starts = [response.rfind(f" {c} ") for c in cands]
    return cands[starts.index(max(starts))]  # np.argmax: the first maximum


def _is_number(s: str) -> bool:
    try:
        float(s.replace(",", ""))
        return True
    except ValueError:
        return False


def normalize(s: str) -> list:
    s = s.strip()
    if _is_number(s):
        return [round(float(s.replace(",", "")), 2)]
    s = s.lower()
    return [" " + s, s + " "] if len(s) == 1 else [s]


def extract_numbers(s: str) -> list[str]:
    commas = re.findall(r"-?\b\d{1,3}(?:,\d{3})+\b", s)
    scientific = re.findall(r"-?\d+(?:\.\d+)?[eE][+-]?\d+", s)
    simple = re.findall(r"-?(?:\d+\.\d+|\.\d+|\d+\b)(?![eE][+-]?\d+)(?![,\d])", s)
    return commas + scientific + simple


def _key_subresponses(response: str) -> list[str]:
    response = response.strip().strip(".").lower()
    subs = re.split(r"\.\s(?=[A-Z])|\n", response)
    keys = []
    for i, sub in enumerate(subs):
        indicators = _INDICATORS + (("=",) if i == len(subs) - 1 else ())
        shortest = None
        for ind in indicators:
            if ind in sub:
                tail = sub.split(ind)[-1].strip()
                if not shortest or len(tail) < len(shortest):
                    shortest = tail
        if shortest and shortest.strip() not in (":", ",", ".", "!", "?", ";", "'"):
            keys.append(shortest)
    return keys or [response]


def parse_open(response: str) -> list:
    keys = _key_subresponses(response)
    preds = list(keys)
    for k in keys:
        preds.extend(extract_numbers(k))
    out = []
    for p in preds:
        out.extend(normalize(p))
    # de-duplicated, in first-seen order (the official list(set(...)) order does not change the verdict)
    return list(dict.fromkeys(out))


def eval_open(gold, preds: list) -> bool:
    golds = []
    for g in (gold if isinstance(gold, list) else [gold]):
        golds.extend(normalize(str(g)))
    for p in preds:
        if isinstance(p, str):
            if any(isinstance(g, str) and g in p for g in golds):
                return True
        elif p in golds:
            return True
    return False
