"""The Python API: load a model once onto a mesh, then generate and score many times.

    from oq2vl_jax.inference import VLMInference
    vlm = VLMInference.load("runs/demo/checkpoints")         # or a workdir, or `convert import` output
    vlm.generate([{"image": "cat.jpg", "text": "What is this?"}], template="chat", max_new_tokens=32)
    -> ["A cat."]
    vlm.score([{"image": "cat.jpg", "text": "Is it a cat?"}], [["Yes", "No"]])       -> [[-0.1, -2.4]]
    vlm.candidate_probabilities([...], ["A", "B", "C", "D"])                       -> [[0.7, 0.1, 0.1, 0.1]]

Requests are described in `inference/prompts.py`. `load` accepts an oq2vl_jax checkpoint directory (what `convert
import` writes for a released model, and what the trainer writes; the latest step unless `step` is given) or a
training workdir (its `checkpoints/`). The mesh is data parallel over the devices (rows of a generate batch are
split across them) and, with `tensor_parallel` > 1, tensor parallel over heads / MLP / vocabulary through the
logical-axis rules table of `oq2vl_jax.parallel`.
"""

from __future__ import annotations

import dataclasses
import os
from typing import Any, Sequence

import jax
import jax.numpy as jnp
import numpy as np
from absl import logging
from flax import nnx

from oq2vl_jax import checkpoint_io, parallel
from oq2vl_jax.errors import UserError
from oq2vl_jax.inference import prompts as prompt_lib
from oq2vl_jax.text import documents as tok_lib, tokens
from oq2vl_jax.text.contract import PromptContract, TRAINED_DEFAULT
from oq2vl_jax.inference.sampler import (FINISH_REASONS, FINISH_STOP_STRING, Sampler, SamplingParams, bucket,
                                         pack_prompts, stop_sequence_array)
from oq2vl_jax.models import layers, params as params_lib
from oq2vl_jax.models.presets import ModelOptions, VLMConfig
from oq2vl_jax.models.vlm import VLM

STOP_TOKENS = (tokens.EOS_TOKEN, tokens.PAD_TOKEN)  # <|im_end|>, <|endoftext|>
DEFAULT_BATCH_SIZE = 8


@dataclasses.dataclass(frozen=True)
class Generation:
    text: str
    token_ids: tuple[int, ...]
    finish_reason: str  # "stop" (stop token), "stop_string" or "length"


def resolve_checkpoint(path: str) -> str:
    """A checkpoint directory, or a workdir holding `checkpoints/` (either may be a gs:// or s3:// prefix)."""
    from oq2vl_jax.storage import paths as storage

    path = storage.resolve(path)
    if not storage.isdir(path):
        raise UserError(f"--ckpt: '{path}' is not a directory")
    nested = storage.join(path, "checkpoints")
    if not any(name.isdigit() for name in storage.listdir(path)) and storage.isdir(nested):
        return nested
    return path


def _is_hf_llava(path: str) -> bool:
    return os.path.isfile(os.path.join(path, "config.json"))


class VLMInference:
    """A loaded model + tokenizer on a mesh. Build with `load` (or the constructor with a parameter tree)."""

    def __init__(self, config: VLMConfig, params: dict, tokenizer_dir: str, *, devices=None, tensor_parallel: int = 1,
                 compute_dtype: str | None = None, attention: str = "auto",
                 contract: PromptContract = TRAINED_DEFAULT):
        devices = list(devices or jax.devices())
        if compute_dtype is None:
            compute_dtype = "float32" if devices[0].platform == "cpu" else "bfloat16"
        self.config, self.contract = config, contract
        self.contract_warning: str | None = None  # set by `load` when the checkpoint does not record its contract
        self.options = ModelOptions(compute_dtype=compute_dtype, attention=attention)
        self.tokenizer = tokens.load_tokenizer(tokenizer_dir, what="checkpoint tokenizer")
        self.encoder = tok_lib.TextEncoder.from_tokenizer(self.tokenizer)
        if self.encoder.vocab_size > config.llm.vocab_size:
            raise UserError(f"the tokenizer in '{tokenizer_dir}' has {self.encoder.vocab_size} tokens but the model's "
                            f"vocabulary is {config.llm.vocab_size}")
        self.stop_ids = sorted({self.tokenizer.convert_tokens_to_ids(t) for t in STOP_TOKENS} - {None})
        if len(devices) % tensor_parallel:
            raise UserError(f"tensor_parallel={tensor_parallel} does not divide the {len(devices)} devices")
        self.mesh = parallel.build_mesh({"data": -1, "fsdp": 1, "tensor": tensor_parallel}, devices)
        abstract = nnx.eval_shape(lambda: VLM(config, self.options, rngs=nnx.Rngs(0)))
        graphdef, abstract_state = nnx.split(abstract, nnx.Param)
        axes = params_lib.logical_axes(abstract)
        params_lib.check_tree_matches(params, abstract_state.to_pure_dict())
        shardings = jax.tree_util.tree_map_with_path(
            lambda p, x: parallel.named_sharding(self.mesh, axes[params_lib.path_str(p)], np.shape(x)), params)
        self.params = nnx.State(jax.device_put(params, shardings))
        cache_dtype = jnp.dtype(compute_dtype)
        self.sampler = Sampler(graphdef, cache_dtype=cache_dtype, cache_sharding=self._cache_shardings)
        self._graphdef = graphdef
        self._score_fn = jax.jit(self._score_impl)
        self._argmax_fn = None  # teacher_forced_argmax's, compiled on first use
        self.data_shards = parallel.batch_shards(self.mesh)

    # ------------------------------------------------------------------------------------------------ loading
    @classmethod
    def load(cls, path: str, *, step: int | None = None, chat_format: str | None = None,
             label_mode: str | None = None, **kwargs) -> "VLMInference":
        """From an oq2vl_jax checkpoint dir or a training workdir (see the module doc). The prompt contract is the
        checkpoint's (a warning when it has none and a default is assumed); chat_format / label_mode override it."""
        if os.path.isdir(path) and _is_hf_llava(path):
            raise UserError(f"'{path}' is a Hugging Face directory; import it first: python -m oq2vl_jax.convert "
                            f"import --from hf-llava {path} --out CKPT (prismatic runs: --from prismatic)")
        ckpt = resolve_checkpoint(path)
        tok_dir = checkpoint_io.tokenizer_path(ckpt)
        if tok_dir is None:
            raise UserError(f"'{ckpt}' has no tokenizer/ directory beside its steps; it is not a complete oq2vl_jax "
                            "checkpoint")
        config, params, meta = checkpoint_io.load_params(ckpt, step)
        contract, warning = checkpoint_io.prompt_contract(meta)
        overrides = {k: v for k, v in (("chat_format", chat_format), ("label_mode", label_mode)) if v is not None}
        if warning and not overrides:
            logging.warning("%s", warning)
        contract = PromptContract.from_dict({**contract.to_dict(), **overrides})
        logging.info("loaded %s step %s (%d image tokens; %s)", ckpt, meta.get("step", step), config.tokens_per_image,
                     contract.describe())
        vlm = cls(config, params, tok_dir, contract=contract, **kwargs)
        vlm.contract_warning = None if overrides else warning
        return vlm

    # ------------------------------------------------------------------------------------------------ helpers
    def _cache_shardings(self, cache):
        return jax.tree.map(lambda x, names: parallel.named_sharding(self.mesh, names, x.shape), cache,
                            cache.logical_axes())

    def _put(self, batch: dict) -> dict:
        return {k: jax.device_put(v, parallel.batch_sharding(self.mesh, np.ndim(v))) for k, v in batch.items()}

    def _rows(self, n: int) -> int:
        rows = bucket(n, 1)
        return -(-rows // self.data_shards) * self.data_shards

    def prompts(self, requests: Sequence[Any], template: str) -> list[prompt_lib.Prompt]:
        return [prompt_lib.build_prompt(r, self.encoder, template=template,
                                        tokens_per_image=self.config.tokens_per_image,
                                        image_size=self.config.vision.image_size, contract=self.contract,
                                        where=f"request {i}")
                for i, r in enumerate(requests)]

    def describe_prompt(self, prompt: prompt_lib.Prompt) -> str:
        """The prompt as the model sees it (decoded, special tokens kept, image blocks as `<image:N tokens>`)."""
        return prompt_lib.describe(prompt.document, lambda ids: self.tokenizer.decode(ids, skip_special_tokens=False))

    def _run(self, fn, *args):
        with layers.activation_sharding(parallel.activation_sharding_fn(self.mesh)):
            return fn(*args)

    # ------------------------------------------------------------------------------------------------ generate
    def generate(self, requests: Sequence[Any], *, template: str = "chat", max_new_tokens: int = 64,
                 temperature: float = 0.0, top_k: int = 0, top_p: float = 1.0, seed: int = 0,
                 stop: Sequence[str] = (), batch_size: int = DEFAULT_BATCH_SIZE,
                 details: bool = False) -> list[str] | list[Generation]:
        """Answers for each request (greedy unless temperature > 0). `details`: `Generation`s with ids and the reason
        each row ended. Requests run in batches of `batch_size`."""
        sampling = self._check_sampling(max_new_tokens, temperature, top_k, top_p, seed)
        built = self.prompts(requests, template)
        out: list[Generation] = []
        for start in range(0, len(built), batch_size):
            out.extend(self.generate_prompts(built[start:start + batch_size], sampling, stop=stop))
        return out if details else [g.text for g in out]

    def _check_sampling(self, max_new_tokens, temperature, top_k, top_p, seed) -> SamplingParams:
        if max_new_tokens < 1:
            raise UserError(f"max_new_tokens must be >= 1, got {max_new_tokens}")
        if temperature < 0 or not 0 < top_p <= 1 or top_k < 0:
            raise UserError(f"need temperature >= 0, 0 < top_p <= 1, top_k >= 0; got {temperature}, {top_p}, {top_k}")
        return SamplingParams(int(max_new_tokens), float(temperature), int(top_k), float(top_p), int(seed))

    def generate_prompts(self, built: Sequence[prompt_lib.Prompt], sampling: SamplingParams, *,
                         stop: Sequence[str] = (), timings: dict | None = None) -> list[Generation]:
        """One batch of already built prompts (the CLI and the benchmark use this to time batches; `timings`: see
        `Sampler.generate`)."""
        rows = self._rows(len(built))
        batch = pack_prompts(built, rows=rows, pad_id=self.encoder.pad_id, image_size=self.config.vision.image_size)
        active = np.arange(rows) < len(built)
        stop_sequences = stop_sequence_array([self.encoder.encode(s) for s in stop])
        tokens, count, reason = self._run(
            lambda: self.sampler.generate(self.params, batch, sampling, stop_ids=self.stop_ids,
                                          stop_sequences=stop_sequences, active=active, put=self._put,
                                          timings=timings))
        out = []
        for r in range(len(built)):
            ids = tuple(int(t) for t in tokens[r, :count[r]])
            text = self.tokenizer.decode(list(ids), skip_special_tokens=True)
            why = FINISH_REASONS[int(reason[r])]
            cut = min([i for i in (text.find(s) for s in stop) if i >= 0], default=-1)
            if cut >= 0:
                text, why = text[:cut], FINISH_REASONS[FINISH_STOP_STRING]
            out.append(Generation(text.strip(), ids, why))
        return out

    # ------------------------------------------------------------------------------------------------ scoring
    def teacher_forced_argmax(self, built: Sequence[prompt_lib.Prompt]) -> np.ndarray:
        """[len(built), L]: the most likely next token at every position of each (whole) document, the document
        given (teacher forcing); rows right-padded to a common bucketed length L."""
        if self._argmax_fn is None:
            self._argmax_fn = jax.jit(lambda params, batch: jnp.argmax(nnx.merge(self._graphdef, params)(batch), -1))
        rows = self._rows(len(built))
        batch = pack_prompts(built, rows=rows, pad_id=self.encoder.pad_id, image_size=self.config.vision.image_size)
        del batch["lengths"]
        return np.asarray(self._run(self._argmax_fn, self.params, self._put(batch)))[:len(built)]

    def _score_impl(self, params, batch, gather, targets, weights, candidate_ids):
        model = nnx.merge(self._graphdef, params)
        hidden = model.hidden_states(batch)
        picked = jnp.take_along_axis(hidden, gather[:, :, None], axis=1)  # [B, C, D]
        logp = jax.nn.log_softmax(model.llm.logits(picked), axis=-1)
        token_logp = jnp.take_along_axis(logp, targets[:, :, None], axis=-1)[..., 0] * weights
        first = jnp.exp(logp[:, 0])  # the distribution after the prompt: the first generated token's
        return token_logp, jnp.take(first, candidate_ids, axis=-1)

    def score_batch(self, built: Sequence[prompt_lib.Prompt], continuations: Sequence[Sequence[int]],
                     candidate_ids: Sequence[int]):
        docs = []
        for pr, cont in zip(built, continuations):
            d = pr.document
            ids = np.concatenate([d.ids, np.asarray(cont, np.int32)])
            mask = np.concatenate([d.image_mask, np.zeros(len(cont), bool)])
            docs.append(prompt_lib.Prompt(tok_lib.DocumentLayout(ids, mask, d.image_starts), pr.images))
        rows = self._rows(len(docs))
        batch = pack_prompts(docs, rows=rows, pad_id=self.encoder.pad_id, image_size=self.config.vision.image_size)
        c = bucket(max(1, max(len(x) for x in continuations)), 1)
        gather = np.zeros((rows, c), np.int32)
        targets = np.zeros((rows, c), np.int32)
        weights = np.zeros((rows, c), np.float32)
        for r, (pr, cont) in enumerate(zip(built, continuations)):
            n = pr.length
            gather[r] = np.minimum(n - 1 + np.arange(c), batch["input_ids"].shape[1] - 1)
            targets[r, :len(cont)] = cont
            weights[r, :len(cont)] = 1.0
        del batch["lengths"]
        arrays = self._put({**batch, "gather": gather, "targets": targets, "weights": weights})
        token_logp, cand = self._run(self._score_fn, self.params, {k: arrays[k] for k in batch}, arrays["gather"],
                                     arrays["targets"], arrays["weights"],
                                     jnp.asarray(np.asarray(candidate_ids, np.int32)))
        return np.asarray(token_logp)[:len(built)], np.asarray(cand)[:len(built)]

    def score(self, requests: Sequence[Any], continuations: Sequence[Sequence[str]], *, template: str = "chat",
              batch_size: int = DEFAULT_BATCH_SIZE) -> list[list[float]]:
        """Log-likelihood (natural log, summed over tokens) of each continuation string after its request's prompt:
        continuations[i] is a list of strings for requests[i]."""
        if len(continuations) != len(requests):
            raise UserError(f"score: {len(requests)} requests but {len(continuations)} continuation lists")
        built = self.prompts(requests, template)
        flat = [(i, self.encoder.encode(c)) for i, conts in enumerate(continuations) for c in conts]
        if any(not ids for _, ids in flat):
            raise UserError("score: a continuation is empty")
        sums: list[float] = []
        for start in range(0, len(flat), batch_size):
            part = flat[start:start + batch_size]
            token_logp, _ = self.score_batch([built[i] for i, _ in part], [ids for _, ids in part], [0])
            sums.extend(float(x) for x in token_logp.sum(axis=1))
        out, k = [], 0
        for conts in continuations:
            out.append(sums[k:k + len(conts)])
            k += len(conts)
        return out

    def candidate_ids(self, candidates: Sequence[str]) -> list[int]:
        ids = []
        for c in candidates:
            enc = self.encoder.encode(c)
            if len(enc) != 1:
                raise UserError(f"candidate {c!r} is {len(enc)} tokens; candidate probabilities need single-token "
                                "strings (use score() for longer answers)")
            ids.append(enc[0])
        return ids

    def candidate_probabilities(self, requests: Sequence[Any], candidates: Sequence[str], *, template: str = "chat",
                                batch_size: int = DEFAULT_BATCH_SIZE) -> np.ndarray:
        """[len(requests), len(candidates)]: the first generated token's probability of each (single-token)
        candidate, renormalised over the candidates (the reference's `return_string_probabilities`)."""
        ids = self.candidate_ids(candidates)
        built = self.prompts(requests, template)
        rows = []
        for start in range(0, len(built), batch_size):
            part = built[start:start + batch_size]
            _, cand = self.score_batch(part, [[ids[0]]] * len(part), ids)
            rows.append(cand)
        probs = np.concatenate(rows, axis=0).astype(np.float64)
        return probs / probs.sum(axis=1, keepdims=True)
