"""TextVQA's official answer normalisation and soft accuracy (EvalAI's VQA processor as used by the TextVQA
evaluator, `mmf` `EvalAIAnswerProcessor` and `TextVQAAccuracyEvaluator`; the original harness calls the same code,
`vlm-evaluation/vlm_eval/util/evaluation/textvqa/m4c_evaluators.py`).

`normalize_answer(text)`:
1. lower case; remove "," and "?"; "'s" -> " 's"; newlines and tabs -> spaces; strip;
2. punctuation `; / [ ] " { } ( ) = + \\ _ - > < @ ` , ? !`: removed where it touches a space (or when the text has
   a digit-comma-digit group), otherwise replaced by a space;
3. periods not followed by a digit are removed (at most 32 of them: the official code passes `re.UNICODE` as the
   `count` argument of `re.sub`, reproduced);
4. number words zero..ten and "none" -> digits; the articles a, an, the dropped; contractions restored
   ("dont" -> "don't").
`soft_accuracy(prediction, answers)`: for each of the 10 human answers, leave it out and count the other answers equal
to the normalised prediction; min(1, count / 3); mean over the 10 subsets.
"""

from __future__ import annotations

import re
from typing import Sequence

_CONTRACTIONS = {}
for _w in ("aint ain't", "arent aren't", "cant can't", "couldve could've", "couldnt couldn't",
           "couldn'tve couldn't've", "couldnt've couldn't've", "didnt didn't", "doesnt doesn't", "dont don't",
           "hadnt hadn't", "hadnt've hadn't've", "hadn'tve hadn't've", "hasnt hasn't", "havent haven't", "hed he'd",
           "hed've he'd've", "he'dve he'd've", "hes he's", "howd how'd", "howll how'll", "hows how's",
           "Id've I'd've", "I'dve I'd've", "Im I'm", "Ive I've", "isnt isn't", "itd it'd", "itd've it'd've",
           "it'dve it'd've", "itll it'll", "let's let's", "maam ma'am", "mightnt mightn't",
           "mightnt've mightn't've", "mightn'tve mightn't've", "mightve might've", "mustnt mustn't",
           "mustve must've", "neednt needn't", "notve not've", "oclock o'clock", "oughtnt oughtn't",
           "ow's'at 'ow's'at", "'ows'at 'ow's'at", "'ow'sat 'ow's'at", "shant shan't", "shed've she'd've",
           "she'dve she'd've", "she's she's", "shouldve should've", "shouldnt shouldn't",
           "shouldnt've shouldn't've", "shouldn'tve shouldn't've", "somebody'd somebodyd",
           "somebodyd've somebody'd've", "somebody'dve somebody'd've", "somebodyll somebody'll",
           "somebodys somebody's", "someoned someone'd", "someoned've someone'd've", "someone'dve someone'd've",
           "someonell someone'll", "someones someone's", "somethingd something'd",
           "somethingd've something'd've", "something'dve something'd've", "somethingll something'll",
           "thats that's", "thered there'd", "thered've there'd've", "there'dve there'd've", "therere there're",
           "theres there's", "theyd they'd", "theyd've they'd've", "they'dve they'd've", "theyll they'll",
           "theyre they're", "theyve they've", "twas 'twas", "wasnt wasn't", "wed've we'd've", "we'dve we'd've",
           "weve we've", "werent weren't", "whatll what'll", "whatre what're", "whats what's", "whatve what've",
           "whens when's", "whered where'd", "wheres where's", "whereve where've", "whod who'd",
           "whod've who'd've", "who'dve who'd've", "wholl who'll", "whos who's", "whove who've", "whyll why'll",
           "whyre why're", "whys why's", "wont won't", "wouldve would've", "wouldnt wouldn't",
           "wouldnt've wouldn't've", "wouldn'tve wouldn't've", "yall y'all", "yall'll y'all'll",
           "y'allll y'all'll", "yall'd've y'all'd've", "y'alld've y'all'd've", "y'all'dve y'all'd've",
           "youd you'd", "youd've you'd've", "you'dve you'd've", "youll you'll", "youre you're",
           "youve you've"):
    _k, _v = _w.split(" ")
    _CONTRACTIONS[_k] = _v
_NUMBERS = {w: str(i) for i, w in enumerate(("zero", "one", "two", "three", "four", "five", "six", "seven",
                                             "eight", "nine", "ten"))}
_NUMBERS["none"] = "0"
_ARTICLES = ("a", "an", "the")
_PUNCTUATION = (";", "/", "[", "]", '"', "{", "}", "(", ")", "=", "+", "\\", "_", "-", ">", "<", "@", "`", ",",
                "?", "!")
_PERIOD = re.compile(r"(?!<=\d)(\.)(?!\d)")  # sic: "(?!<=" is a lookahead, so every "." before a non-digit goes
_DIGIT_COMMA = re.compile(r"(?<=\d)(\,)+(?=\d)")
_OFFICIAL_PERIOD_COUNT = int(re.UNICODE)  # the official call passes re.UNICODE (32) as `count`


def _punctuation(text: str) -> str:
    out = text
    has_digit_comma = _DIGIT_COMMA.search(text) is not None
    for p in _PUNCTUATION:
        if p + " " in text or " " + p in text or has_digit_comma:
            out = out.replace(p, "")
        else:
            out = out.replace(p, " ")
    return _PERIOD.sub("", out, count=_OFFICIAL_PERIOD_COUNT)


def _digits_articles(text: str) -> str:
    words = [_NUMBERS.get(w, w) for w in text.lower().split()]
    words = [w for w in words if w not in _ARTICLES]
    return " ".join(_CONTRACTIONS.get(w, w) for w in words)


def normalize_answer(text: str) -> str:
    text = text.lower().replace(",", "").replace("?", "").replace("'s", " 's").strip()
    text = text.replace("\n", " ").replace("\t", " ").strip()
    return _digits_articles(_punctuation(text))


def soft_accuracy(prediction: str, answers: Sequence[str]) -> float:
    """The official soft accuracy of one prediction against the 10 human answers (any count works; TextVQA has 10)."""
    pred = normalize_answer(prediction)
    gts = [normalize_answer(a) for a in answers]
    if not gts:
        return 0.0
    accs = []
    for i in range(len(gts)):
        matches = sum(1 for j, g in enumerate(gts) if j != i and g == pred)
        accs.append(min(1.0, matches / 3))
    return sum(accs) / len(accs)
