"""The runner's model: `oq2vl_jax.inference.VLMInference` behind the `EvalModel` protocol (evals/kit.py).

Each process loads its own replica on its local devices (rows of a batch are split over them); the runner shards
items over processes, so evaluation is data parallel over processes and devices without cross-host collectives.

Prompts: "base" requests become `<s>` + the text with one image block at each `<image>` (every text chunk tokenized
on its own, as the original's `tokenizer_image_token`; the first token of a chunk after an image is kept, unlike the
original's bug, docs/sft.md); "chat" requests become the SFT chat prompt of `text/chat.py` with the generation
prompt, in the checkpoint's prompt contract (text/contract.py; what `VLMInference` and the generate CLI send). Images are decoded and resized exactly as in training. Generated text is the decoded new tokens
without special tokens, stripped; a stop string's token is kept (as Hugging Face keeps the EOS it stopped on).
Candidate probabilities: the first generated token's distribution, renormalised over single-token candidates.
"""

from __future__ import annotations

from typing import Sequence

from oq2vl_jax.errors import UserError
from oq2vl_jax.evals.kit import IMAGE_MARKER, Request


class InferenceModel:
    def __init__(self, vlm):
        import jax

        self.vlm = vlm
        self.process_index, self.process_count = jax.process_index(), jax.process_count()

    def barrier(self, name: str) -> None:
        if self.process_count > 1:
            from jax.experimental import multihost_utils

            multihost_utils.sync_global_devices(f"evals-{name}")

    def _document(self, r: Request, num_images: int, where: str):
        from oq2vl_jax.inference.prompts import chat_document
        from oq2vl_jax.text import documents as tok_lib

        cfg = self.vlm.config
        if r.template == "chat":
            doc = chat_document(self.vlm.encoder, [{"role": "user", "content": r.prompt}], cfg.tokens_per_image,
                                num_images, self.vlm.contract, where)
        else:  # an image block at each marker
            parts: list = []
            for k, chunk in enumerate(r.prompt.split(IMAGE_MARKER)):
                parts += [k - 1, chunk] if k else [chunk]
            doc = tok_lib.prompt_document(self.vlm.encoder, parts, cfg.tokens_per_image)
        if doc.num_images != num_images:
            raise UserError(f"{where}: the prompt has {doc.num_images} image slot(s) for {num_images} image(s)")
        return doc

    def _prompt(self, r: Request, where: str):
        from oq2vl_jax.inference.prompts import Prompt, load_image

        size = self.vlm.config.vision.image_size
        pixels = tuple(load_image(s, size, f"{where} image {i}") for i, s in enumerate(r.images))
        return Prompt(self._document(r, len(pixels), where), pixels)

    def prompt_text(self, r: Request) -> str:
        """The request's prompt as the model sees it (decoded, image blocks as `<image:N tokens>`)."""
        from oq2vl_jax.inference.prompts import describe

        doc = self._document(r, len(r.images), "request")
        return describe(doc, lambda ids: self.vlm.tokenizer.decode(ids, skip_special_tokens=False))

    def generate(self, requests: Sequence[Request]) -> list[str]:
        from oq2vl_jax.inference.sampler import SamplingParams

        out: list[str | None] = [None] * len(requests)
        groups: dict[tuple, list[int]] = {}
        for i, r in enumerate(requests):
            groups.setdefault((r.max_new_tokens, r.stop), []).append(i)
        for (max_new, stop), idx in groups.items():
            built = [self._prompt(requests[i], f"request {i}") for i in idx]
            gens = self.vlm.generate_prompts(built, SamplingParams(max_new_tokens=max_new), stop=stop)
            for i, g in zip(idx, gens, strict=True):
                # the full decode keeps the stop string's token; the API's text is cut before it
                out[i] = self.vlm.tokenizer.decode(list(g.token_ids), skip_special_tokens=True).strip()
        return out  # type: ignore[return-value]

    def score(self, requests: Sequence[Request]) -> list[list[float]]:
        out: list = [None] * len(requests)
        groups: dict[tuple, list[int]] = {}
        for i, r in enumerate(requests):
            groups.setdefault(r.candidates, []).append(i)
        for cands, idx in groups.items():
            ids = self.vlm.candidate_ids(cands)
            built = [self._prompt(requests[i], f"request {i}") for i in idx]
            _, probs = self.vlm.score_batch(built, [[ids[0]]] * len(built), ids)
            for i, p in zip(idx, probs, strict=True):
                total = float(sum(p))
                out[i] = [float(x) / total for x in p]
        return out


def load_model(ckpt: str) -> InferenceModel:
    """`--ckpt`: an oq2vl_jax checkpoint directory, a training workdir, or an hf-llava directory."""
    try:
        from oq2vl_jax.inference import VLMInference
    except ImportError as e:
        raise UserError(f"--ckpt needs the inference package (oq2vl_jax.inference), which is missing: {e}") from e
    import jax

    return InferenceModel(VLMInference.load(ckpt, devices=jax.local_devices()))
