"""The Jinja chat template an hf-llava export carries: the checkpoint's prompt contract (text/contract.py) written
for `AutoProcessor.apply_chat_template`, so that transformers (and vLLM / SGLang, which read the same template)
send the model the token ids our `text/chat.py` renderer sends, token for token (tests/convert/test_chat_template.py).

What it renders, per chat format (text/chat.py has the reference strings):
  "open_qwen2vl"  `<s><|im_start|>system\\n{system}<|im_end|>\\n` before the first user turn, user turns
                  `<|im_start|>user\\n{msg}<|im_end|>assistant\\n`, assistant turns `{msg or ' '}<|im_end|>\\n`,
                  every message stripped; add_generation_prompt adds nothing (the user turn ends with the header).
  "qwen2", "qwen2.5"  the stock Qwen2 template: `<|im_start|>{role}\\n{content}<|im_end|>\\n`, the format's default
                  system prompt, `<|im_start|>assistant\\n` for add_generation_prompt; contents as given.
Content parts: an image part is `<image>`; a text part right after image parts is joined with the contract's image
separator unless it starts with it (text/chat.py `_content_text`).

Label mode "reference_compat" (the original's release): the original dropped the first token after each image of
the first user turn. The template reproduces the two layouts its data had, "<image>\\n{text}" (the "\\n" goes) and an
image ending the message (its `<|im_end|>` goes); an image followed by other text in that turn is refused with
`raise_exception` (which token the original dropped depends on the tokenizer, which a template cannot see).
"""

from __future__ import annotations

from oq2vl_jax.text import chat
from oq2vl_jax.text.contract import PromptContract
from oq2vl_jax.text.tokens import IMAGE_TOKEN


def _lit(text: str) -> str:
    """A Jinja string literal of `text`."""
    return "'" + text.encode("unicode_escape").decode("ascii").replace("'", "\\'") + "'"


def _message_text(sep: str) -> str:
    """Sets `text` to the message's content as one string (parts joined as text/chat.py `_content_text`)."""
    return (
        "{%- if message['content'] is string -%}{%- set text = message['content'] -%}"
        "{%- else -%}{%- set parts = namespace(s='', after=false) -%}"
        "{%- for part in message['content'] -%}"
        f"{{%- if part['type'] == 'image' -%}}{{%- set parts.s = parts.s + {_lit(IMAGE_TOKEN)} -%}}"
        "{%- set parts.after = true -%}"
        "{%- elif part['type'] == 'text' -%}"
        f"{{%- if parts.after and not part['text'].startswith({_lit(sep)}) -%}}"
        f"{{%- set parts.s = parts.s + {_lit(sep)} -%}}{{%- endif -%}}"
        "{%- set parts.s = parts.s + part['text'] -%}{%- set parts.after = false -%}"
        "{%- endif -%}"
        "{%- endfor -%}{%- set text = parts.s -%}{%- endif -%}")


def _system(default: str, strip: bool) -> str:
    """Sets ns.system to the system message's text (the format's default without one)."""
    trim = " | trim" if strip else ""
    return (
        f"{{%- set ns = namespace(system={_lit(default)}, first=true) -%}}"
        "{%- for message in messages if message['role'] == 'system' -%}"
        f"{{%- if message['content'] is string -%}}{{%- set ns.system = message['content']{trim} -%}}"
        "{%- else -%}{%- set ns.system = (message['content'] | selectattr('type', 'equalto', 'text') "
        f"| map(attribute='text') | join('')){trim} -%}}{{%- endif -%}}"
        "{%- endfor -%}")


def _dropped_after_image(sep: str) -> str:
    """The first user turn of a reference_compat model: the token after each image goes (see the module doc)."""
    img = _lit(IMAGE_TOKEN)
    return (
        f"{{%- for chunk in text.split({img})[1:] -%}}"
        f"{{%- if chunk and (not chunk.startswith({_lit(sep)}) or chunk.startswith({_lit(sep + sep)})) -%}}"
        "{{ raise_exception('this model (the original\\'s prompt contract) reads an image in the first user "
        "message only before a newline or at its end') }}"
        "{%- endif -%}{%- endfor -%}"
        f"{{%- set text = text | replace({_lit(IMAGE_TOKEN + sep)}, {img}) -%}}"
        f"{{%- set close = '' if text.endswith({img}) else '<|im_end|>' -%}}")


def chat_template(contract: PromptContract) -> str:
    sep = contract.image_separator
    if contract.chat_format == "open_qwen2vl":
        drop = contract.reference_compat
        return (  # literal text only inside {{ '...' }} so whitespace control never eats a newline
            _system(chat.OPEN_QWEN2VL_SYSTEM, strip=True)
            + "{%- for message in messages if message['role'] != 'system' -%}"
            + _message_text(sep)
            + "{%- set text = text | trim -%}{%- set close = '<|im_end|>' -%}"
            "{%- if message['role'] == 'user' -%}"
            "{%- if ns.first -%}" + (_dropped_after_image(sep) if drop else "")
            + "{{ '<s><|im_start|>system\\n' + ns.system + '<|im_end|>\\n' }}"
            "{%- set ns.first = false -%}{%- endif -%}"
            "{{ '<|im_start|>user\\n' + text + close + 'assistant\\n' }}"
            "{%- else -%}{{ (text if text else ' ') + '<|im_end|>\\n' }}"
            "{%- endif -%}"
            "{%- endfor -%}")
    if contract.chat_format in chat.STOCK_SYSTEM:
        return (
            _system(chat.STOCK_SYSTEM[contract.chat_format], strip=False)
            + "{{ '<|im_start|>system\\n' + ns.system + '<|im_end|>\\n' }}"
            "{%- for message in messages if message['role'] != 'system' -%}"
            + _message_text(sep)
            + "{{ '<|im_start|>' + message['role'] + '\\n' + text + '<|im_end|>\\n' }}"
            "{%- endfor -%}"
            "{%- if add_generation_prompt -%}{{ '<|im_start|>assistant\\n' }}{%- endif -%}")
    raise ValueError(f"no chat template for chat format {contract.chat_format!r}")
