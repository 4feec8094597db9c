"""The task kit: what a task hands the model and what it gets back (items, requests, the small model protocol), the
prompt styles, and the task contract every benchmark module follows: `Task`, the two common kinds
`MultipleChoiceTask` and `ShortAnswerTask`, and `@register` (evals/registry.py imports every module of evals/tasks/,
so a decorated class is a task of `python -m oq2vl_jax.evaluate --task NAME` with no other edit).

A task turns each benchmark record into an `Item` and each item into one or more named `Request`s. A request either
asks for generated text (`kind="generate"`) or for the probabilities of single-token candidate answers at the first
generated position (`kind="score"`, the original harness's `return_string_probabilities`). The runner batches
requests and calls an `EvalModel`; the inference package provides one, tests use a scripted fake.

A `Task` loads its published files into `Item`s, builds the named requests of an item for a prompt style, scores one
item's outputs with both scorers (`strict` and `reference`, each a number in [0, 1]; POPE adds its predicted label),
and aggregates the per-item records into metrics. Scores in summaries are percentages.

Prompt styles: "reference" (the original harness's raw prompts, as written) and "chat" (the SFT chat template).

Reference prompts are base-model style, no chat template (`vlm-evaluation/vlm_eval/tasks/harnesses/*.py`); each task
module builds its own. Their generation settings: greedy, 16 new tokens, stop after ".", "," or "\\n" (the
harness's `eos_token_id` list, `vlm-evaluation/vlm_eval/models/prismatic.py`, whose other ids are ordinary Qwen tokens
left over from Llama/Phi vocabularies and are not reproduced).

Chat prompts are the user message of one turn; the model renders it in the original's SFT template
(`oq2vl_jax/text/chat.py` "open_qwen2vl": system "You are a helpful assistant.", then `<|im_start|>user\n{msg}
<|im_end|>assistant\n`, no `\n<|im_start|>` before "assistant", as `qwen2_prompter.py`). Generation stops at the
model's EOS (`<|im_end|>`).
"""

from __future__ import annotations

import dataclasses
import random
from collections import defaultdict
from typing import Any, Iterable, Mapping, Protocol, Sequence, Union

from oq2vl_jax.evals.scorers import choice
from oq2vl_jax.evals.scorers.vqa_norm import normalize_answer

# An image as the task found it: encoded bytes (parquet / TSV / base64) or a path to a file.
ImageRef = Union[bytes, str]
IMAGE_MARKER = "<image>"


@dataclasses.dataclass(frozen=True)
class Item:
    """One benchmark question. `id` is unique within the task and stable across runs (resume and compare key)."""
    id: str
    images: tuple[ImageRef, ...]
    fields: dict[str, Any]
    category: str = ""


@dataclasses.dataclass(frozen=True)
class Request:
    """One model call. Every `<image>` in `prompt` marks where the next image of `images` goes.

    `template` "base": `prompt` is the whole text and the model prepends only its BOS (the original's
    `generate_batch` always prepends one `<s>`). `template` "chat": `prompt` is the user message and the model
    renders it in the SFT chat format with the generation prompt (`oq2vl_jax.text.chat`, in the checkpoint's prompt
    contract, docs/inference.md).
    For `generate`, decoding is greedy; it ends after `max_new_tokens`, after the first generated token whose text is
    one of `stop` (that token is kept, as Hugging Face keeps an EOS it stopped on), or at the model's EOS; the text is
    decoded without special tokens and stripped. For `score`, `candidates` are strings that must be single tokens; the model
    returns their first-step probabilities renormalised over the candidates.
    """
    prompt: str
    images: tuple[ImageRef, ...]
    kind: str = "generate"
    template: str = "base"
    max_new_tokens: int = 16
    stop: tuple[str, ...] = ()
    candidates: tuple[str, ...] = ()

    def __post_init__(self):
        if self.kind not in ("generate", "score"):
            raise ValueError(f"Request.kind must be 'generate' or 'score', got {self.kind!r}")
        if self.template not in ("base", "chat"):
            raise ValueError(f"Request.template must be 'base' or 'chat', got {self.template!r}")
        if self.kind == "score" and not self.candidates:
            raise ValueError("a score request needs candidates")
        if self.prompt.count(IMAGE_MARKER) != len(self.images):
            raise ValueError(f"prompt has {self.prompt.count(IMAGE_MARKER)} {IMAGE_MARKER} markers but "
                             f"{len(self.images)} images")


class EvalModel(Protocol):
    """What the runner needs from a model. Both calls are batched and deterministic."""

    def generate(self, requests: Sequence[Request]) -> list[str]:
        """Greedy continuation text per request."""

    def score(self, requests: Sequence[Request]) -> list[list[float]]:
        """Per request, the renormalised first-token probabilities of its candidates (same order)."""



# --- prompt styles

STYLES = ("reference", "chat")
REFERENCE_STOP = (".", ",", "\n")
REFERENCE_MAX_NEW_TOKENS = 16
CHAT_MAX_NEW_TOKENS = 32
VQA_SUFFIX = "\nAnswer the question using a single word or phrase."
LETTER_SUFFIX = "\nAnswer with the option's letter from the given choices directly."


def chat_prompt(user_message: str) -> str:
    """The chat prompt as text, for display (`--dry_run`, no model loaded: the default contract's "open_qwen2vl"
    rendering); the model renders the request in its checkpoint's prompt contract, and each prediction record carries
    that exact prompt (`prompts`)."""
    from oq2vl_jax.text import chat

    return (chat.OPEN_QWEN2VL_SYSTEM_PREFIX.format(system=chat.OPEN_QWEN2VL_SYSTEM)
            + chat.OPEN_QWEN2VL_USER.format(msg=user_message.strip()))


def display(request: Request) -> str:
    return chat_prompt(request.prompt) if request.template == "chat" else request.prompt


def reference_vqa(question: str) -> str:
    """The harness's "VQA prompt" (TextVQA, POPE, ...)."""
    return f"{IMAGE_MARKER}\nQuestion: {question}{VQA_SUFFIX}\nAnswer:"


def option_lines(options: Mapping[str, str]) -> str:
    return "".join(f"\n{k}. {v}" for k, v in options.items())


def request(style: str, prompt_or_message: str, images: tuple[ImageRef, ...], *,
            chat_max_new_tokens: int = CHAT_MAX_NEW_TOKENS) -> Request:
    """A generate request: a reference prompt as is, or a user message wrapped in the chat template."""
    if style == "reference":
        return Request(prompt_or_message, tuple(images), max_new_tokens=REFERENCE_MAX_NEW_TOKENS,
                       stop=REFERENCE_STOP)
    if style == "chat":
        return Request(prompt_or_message, tuple(images), max_new_tokens=chat_max_new_tokens, template="chat")
    raise ValueError(f"prompt style must be one of {STYLES}, got {style!r}")


def fit_images(prompt: str, images: tuple[ImageRef, ...]) -> tuple[ImageRef, ...]:
    """Images matched to the prompt's markers as the original does for MMMU and Mantis: cycled when the prompt
    refers to more images than given (`itertools.cycle`), and the extra ones dropped (the model never reaches them)."""
    n = prompt.count(IMAGE_MARKER)
    if not images:
        return ()
    return tuple(images[i % len(images)] for i in range(n))


# --- the task contract

SCORERS = ("strict", "reference")


class Task:
    name: str = ""
    description: str = ""

    def load(self, data_dir: str) -> list[Item]:
        raise NotImplementedError

    def requests(self, item: Item, style: str) -> dict[str, Request]:
        raise NotImplementedError

    def score(self, item: Item, outputs: dict[str, Any], rng: random.Random) -> dict[str, Any]:
        """-> {"strict": float, "reference": float, "answer": gold shown in reports, optional extras}."""
        raise NotImplementedError

    def aggregate(self, records: list[dict]) -> dict[str, dict]:
        return {s: mean_metrics(records, s) for s in SCORERS}


def percent(values: Iterable[float]) -> float:
    values = list(values)
    return 100.0 * sum(values) / len(values) if values else 0.0


def mean_metrics(records: list[dict], scorer: str) -> dict:
    """{"score": mean %, "n": count, "by_category": {category: mean %}} (categories only when there are several)."""
    by_cat: dict[str, list[float]] = defaultdict(list)
    for r in records:
        by_cat[r.get("category", "")].append(r[scorer])
    out = {"score": percent(r[scorer] for r in records), "n": len(records)}
    if len(by_cat) > 1:
        out["by_category"] = {c: percent(v) for c, v in sorted(by_cat.items())}
    return out


def item_rng(seed: int, task: str, item_id: str) -> random.Random:
    """The random source of one item's fallback guess: fixed by (seed, task, item), independent of order and
    sharding, so a resumed or data-parallel run draws the same guesses."""
    return random.Random(f"{seed}/{task}/{item_id}")


# --- the common kinds of task, and registration

TASKS: dict[str, type[Task]] = {}  # name -> task class, filled by @register (evals/registry.py imports evals/tasks/)


def register(cls: type[Task]) -> type[Task]:
    """Class decorator: makes a Task subclass a named task of the evaluate CLI and of `config.evals`."""
    if not cls.name:
        raise ValueError(f"{cls.__name__} needs a `name`")
    if TASKS.get(cls.name, cls) is not cls:
        raise ValueError(f"two tasks are named {cls.name!r}: {TASKS[cls.name].__name__} and {cls.__name__}")
    TASKS[cls.name] = cls
    return cls


class MultipleChoiceTask(Task):
    """A question with lettered options. `load` gives items whose fields hold "question", "options" ({letter: text},
    in order) and "answer" (the gold letter).

    Prompt: `question_text` (by default the image, the question and one line per option), then the letter
    instruction; the reference style ends with "\nAnswer:" as the original harness does, the chat style sends it as
    the user message. Strict score: the letter extracted from the output over the options (scorers/choice.py);
    reference score: the harness's `answer in output`, case-sensitive where `reference_case_sensitive`.
    """
    reference_case_sensitive = False

    def question_text(self, item: Item, style: str) -> str:
        f = item.fields
        return f"{IMAGE_MARKER}\n{f['question']}{option_lines(f['options'])}"

    def requests(self, item, style):
        text = self.question_text(item, style) + LETTER_SUFFIX + ("\nAnswer:" if style == "reference" else "")
        return {"answer": request(style, text, item.images)}

    def score(self, item, outputs, rng):
        out, f = outputs["answer"], item.fields
        letter = choice.extract_letter(out, f["options"])
        reference = choice.reference_substring(f["answer"], out, case_sensitive=self.reference_case_sensitive)
        return {"strict": float(letter == f["answer"]), "strict_pred": letter, "reference": float(reference),
                "answer": f["answer"]}


class ShortAnswerTask(Task):
    """A question answered in a word or a phrase. `load` gives items whose fields hold "question" and "answer".

    Prompt: the harness's VQA prompt in the reference style; in the chat style the image, the question and
    `chat_suffix`. Strict score: exact match after EvalAI normalisation (scorers/vqa_norm.py); reference score: the
    harness's `answer in output`.
    """
    chat_suffix = ""

    def requests(self, item, style):
        q = item.fields["question"]
        text = reference_vqa(q) if style == "reference" else f"{IMAGE_MARKER}\n{q}{self.chat_suffix}"
        return {"answer": request(style, text, item.images)}

    def score(self, item, outputs, rng):
        out, gold = outputs["answer"], item.fields["answer"]
        return {"strict": float(normalize_answer(out) == normalize_answer(gold)),
                "reference": float(choice.reference_substring(gold, out)), "answer": gold}
