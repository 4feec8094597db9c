"""The prompt contract: how a checkpoint was taught to read a conversation, so every way of asking it sends the same
tokens (docs/inference.md).

  chat_format       the SFT chat format (text/chat.py CHAT_FORMATS)
  label_mode        "default": every token of the document is kept; "reference_compat": the original's
                    `tokenizer_image_token` drops the first token after each image of the first user turn (the "\\n"
                    of "<image>\\n", or `<|im_end|>` when the image ends the message; prismatic-vlms/prismatic/
                    util/data_utils.py `tokenizer_image_token`, used by its FinetuneDataset) and the rows are one
                    segment
  image_separator   the text between the images of a turn and the text after them when images are given apart from
                    the text (an `--image` with `--prompt`, image parts of a message): "\\n", LLaVA's "<image>\\n"
                    layout (LLaVA-665k, MAmmoTH-VL, our data pipeline's repair of a record without placeholders)

A checkpoint trained here records the contract of its data pipeline (data.chat_format, data.label_mode); one imported
from the original's release records ORIGINAL (its SFT data went through the dropping tokenizer); a checkpoint saved
before the record existed gets `from_meta`'s documented default and a warning.
"""

from __future__ import annotations

import dataclasses
import json
from typing import Any, Mapping

CONTRACT_KEYS = ("chat_format", "label_mode", "image_separator")
LABEL_MODES = ("default", "reference_compat")  # data/batching.py LABEL_MODES (data imports us, not the reverse)


@dataclasses.dataclass(frozen=True)
class PromptContract:
    chat_format: str = "open_qwen2vl"
    label_mode: str = "default"
    image_separator: str = "\n"

    @property
    def reference_compat(self) -> bool:
        return self.label_mode == "reference_compat"

    def to_dict(self) -> dict[str, str]:
        return {k: getattr(self, k) for k in CONTRACT_KEYS}

    @classmethod
    def from_dict(cls, record: Mapping[str, Any]) -> "PromptContract":
        from oq2vl_jax.errors import UserError
        from oq2vl_jax.text.chat import CHAT_FORMATS

        values = {k: record[k] for k in CONTRACT_KEYS if record.get(k) is not None}
        contract = cls(**values)
        if contract.chat_format not in CHAT_FORMATS or contract.label_mode not in LABEL_MODES:
            raise UserError(f"prompt contract {contract.to_dict()} names an unknown chat format or label mode "
                            f"(known: {CHAT_FORMATS}, {LABEL_MODES})")
        return contract

    def describe(self) -> str:
        return (f"chat format {self.chat_format}, label mode {self.label_mode}, images then "
                f"{json.dumps(self.image_separator)} before the text")


TRAINED_DEFAULT = PromptContract()                              # what the data pipeline writes by default
ORIGINAL = PromptContract("open_qwen2vl", "reference_compat")   # the original's released checkpoints


def for_data_config(data_config) -> PromptContract:
    """The contract of a run trained on `data_config` (data.chat_format, data.label_mode)."""
    return PromptContract(chat_format=str(data_config.chat_format), label_mode=str(data_config.label_mode))
