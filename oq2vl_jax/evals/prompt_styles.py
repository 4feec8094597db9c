"""Prompt styles: "reference" (the original harness's raw prompts, as written) and "chat" (the SFT chat template).

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

from typing import Mapping

from oq2vl_jax.evals.kit import IMAGE_MARKER, ImageRef, Request

STYLES = ("reference", "chat")
REFERENCE_STOP = (".", ",", "\n")
REFERENCE_MAX_NEW_TOKENS = 16
CHAT_MAX_NEW_TOKENS = 32
VQA_SUFFIX = "\nAnswer the question using a single word or phrase."
LETTER_SUFFIX = "\nAnswer with the option's letter from the given choices directly."


def chat_prompt(user_message: str) -> str:
    """The chat prompt as text, for display (`--dry_run`): the model builds the same from the request itself."""
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
