"""Batched generation: one jitted prefill and one jitted on-device decode loop (`lax.while_loop`).

Host side (`pack_prompts`): prompts are right-padded to a bucketed length P (powers of two from `MIN_PROMPT_BUCKET`,
so a long run compiles a handful of shapes), images to a bucketed slot count M, rows to a bucketed batch; padding
rows are finished from the start. The KV cache has P + N slots, N = bucketed `max_new_tokens`.

Device side:
  prefill   the whole prompt batch through the model once (`VLM.hidden_states` with the cache): each row's logits at
            its last prompt token, and the filled cache.
  decode    a `lax.while_loop`; each step samples one token per row, records it, checks the stops, and runs the
            decoder on it at the row's next position (the same cached code path as prefill). It ends when every row
            has finished or N tokens were made. No Python runs per token.

Stops, per row: a stop token (`<|im_end|>`, the tokenizer's EOS...), `max_new_tokens`, or a stop string. Stop strings
are matched on device as token suffixes (their plain tokenizations) so rows stop early; the host then cuts the
decoded text at the first occurrence of any stop string, which also catches a stop string the model spelled with
other tokens. Finished rows emit padding.

Sampling: greedy (temperature 0) or temperature with optional top-k and top-p (nucleus), from a seed; the key of
step i is `fold_in(key(seed), i)`, so a seed reproduces its outputs for the same batch.
"""

from __future__ import annotations

import dataclasses
import math
import time
from typing import Sequence

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from oq2vl_jax.inference.prompts import Prompt
from oq2vl_jax.models.cache import KVCache

MIN_PROMPT_BUCKET = 32
MIN_NEW_BUCKET = 16
FINISH_LENGTH, FINISH_STOP_TOKEN, FINISH_STOP_STRING = 0, 1, 2
FINISH_REASONS = {FINISH_LENGTH: "length", FINISH_STOP_TOKEN: "stop", FINISH_STOP_STRING: "stop_string"}
NO_TOKEN = -1


def bucket(n: int, minimum: int) -> int:
    """Smallest power of two >= max(n, minimum)."""
    return 1 << max(0, math.ceil(math.log2(max(n, minimum, 1))))


@dataclasses.dataclass(frozen=True)
class SamplingParams:
    max_new_tokens: int = 64
    temperature: float = 0.0  # 0 = greedy
    top_k: int = 0  # 0 = off
    top_p: float = 1.0  # 1 = off
    seed: int = 0

    @property
    def greedy(self) -> bool:
        return self.temperature <= 0.0


def pack_prompts(prompts: Sequence[Prompt], *, rows: int, pad_id: int, image_size: int,
                 min_prompt_bucket: int = MIN_PROMPT_BUCKET) -> dict[str, np.ndarray]:
    """Right-padded numpy batch of `rows` rows (the first len(prompts) real): the model's batch keys plus `lengths`."""
    p = bucket(max(pr.length for pr in prompts), min_prompt_bucket)
    m = bucket(max(1, max(len(pr.images) for pr in prompts)), 1)
    batch = {
        "input_ids": np.full((rows, p), pad_id, np.int32), "image_mask": np.zeros((rows, p), np.bool_),
        "segment_ids": np.zeros((rows, p), np.int32),
        "positions": np.broadcast_to(np.arange(p, dtype=np.int32), (rows, p)).copy(),
        "images": np.zeros((rows, m, image_size, image_size, 3), np.uint8), "image_valid": np.zeros((rows, m), bool),
        "lengths": np.zeros((rows,), np.int32),
    }
    for r, pr in enumerate(prompts):
        n = pr.length
        batch["input_ids"][r, :n] = pr.document.ids
        batch["image_mask"][r, :n] = pr.document.image_mask
        batch["segment_ids"][r, :n] = 1
        batch["lengths"][r] = n
        for k, img in enumerate(pr.images):
            batch["images"][r, k] = img
            batch["image_valid"][r, k] = True
    return batch


def sample_tokens(logits: jax.Array, key: jax.Array, temperature, top_p, *, greedy: bool, top_k: int) -> jax.Array:
    """logits [B, V] float32 -> token ids [B]."""
    if greedy:
        return jnp.argmax(logits, axis=-1).astype(jnp.int32)
    logits = logits / temperature
    if top_k:
        kth = jax.lax.top_k(logits, top_k)[0][:, -1:]
        logits = jnp.where(logits < kth, -jnp.inf, logits)
    # nucleus: keep the smallest set of most likely tokens whose mass reaches top_p (always the most likely one)
    sorted_logits = jnp.sort(logits, axis=-1)[:, ::-1]
    probs = jax.nn.softmax(sorted_logits, axis=-1)
    mass_before = jnp.cumsum(probs, axis=-1) - probs
    keep = mass_before < top_p
    threshold = jnp.min(jnp.where(keep, sorted_logits, jnp.inf), axis=-1, keepdims=True)
    logits = jnp.where(logits < threshold, -jnp.inf, logits)
    return jax.random.categorical(key, logits, axis=-1).astype(jnp.int32)


def stop_sequence_array(sequences: Sequence[Sequence[int]]) -> np.ndarray:
    """Token sequences -> int32 [n, L] right-aligned, NO_TOKEN (a wildcard) on the left; [1, 1] of NO_TOKEN... never
    matches when there are none (a row of wildcards would match everything, so an empty set is a length-0 array)."""
    sequences = [list(s) for s in sequences if len(s)]
    width = max([len(s) for s in sequences] or [1])
    out = np.full((len(sequences), width), NO_TOKEN, np.int32)
    for i, s in enumerate(sequences):
        out[i, width - len(s):] = s
    return out


class Sampler:
    """Jitted prefill and decode for one model (graphdef fixed); compiled once per bucketed shape."""

    def __init__(self, graphdef, *, cache_dtype, cache_sharding=None):
        self.graphdef = graphdef
        self.cache_dtype = cache_dtype
        self.cache_sharding = cache_sharding  # fn(KVCache of logical axes, shapes) -> KVCache of shardings, or None
        self._prefill = jax.jit(self._prefill_impl, static_argnames=("cache_length",))
        donate = ("cache",) if jax.default_backend() != "cpu" else ()  # XLA:CPU cannot reuse donated buffers
        self._decode = jax.jit(self._decode_impl, static_argnames=("greedy", "top_k", "buffer_length"),
                               donate_argnames=donate)

    def _model(self, params):
        return nnx.merge(self.graphdef, params)

    def _constrain(self, cache: KVCache) -> KVCache:
        if self.cache_sharding is None:
            return cache
        shardings = self.cache_sharding(cache)
        return jax.tree.map(jax.lax.with_sharding_constraint, cache, shardings)

    def _prefill_impl(self, params, batch, *, cache_length: int):
        model = self._model(params)
        batch = {k: v for k, v in batch.items() if k != "done"}
        rows = batch["input_ids"].shape[0]
        cache = self._constrain(KVCache.zeros(model.config.llm, rows, cache_length, self.cache_dtype))
        hidden, cache = model.hidden_states(batch, cache)
        last = jnp.take_along_axis(hidden, jnp.maximum(batch["lengths"] - 1, 0)[:, None, None], axis=1)
        return model.llm.logits(last)[:, 0], self._constrain(cache)

    def _decode_impl(self, params, cache, logits, lengths, done, key, temperature, top_p, max_new_tokens,
                     stop_ids, stop_sequences, *, greedy: bool, top_k: int, buffer_length: int):
        model = self._model(params)
        rows = logits.shape[0]
        width = stop_sequences.shape[1]
        # buffer with `width` columns of NO_TOKEN in front, so a stop-sequence window never starts before 0
        tokens = jnp.full((rows, width + buffer_length), NO_TOKEN, jnp.int32)
        reason = jnp.full((rows,), FINISH_LENGTH, jnp.int32)
        count = jnp.zeros((rows,), jnp.int32)

        def cond(state):
            i, _, _, _, done, *_ = state
            return (i < max_new_tokens) & ~jnp.all(done)

        def body(state):
            i, cache, logits, tokens, done, reason, count = state
            token = sample_tokens(logits, jax.random.fold_in(key, i), temperature, top_p, greedy=greedy, top_k=top_k)
            live = ~done
            tokens = jax.lax.dynamic_update_slice(tokens, jnp.where(live, token, NO_TOKEN)[:, None], (0, width + i))
            is_stop_token = jnp.any(token[:, None] == stop_ids[None, :], axis=-1)
            window = jax.lax.dynamic_slice(tokens, (0, i + 1), (rows, width))  # the last `width` tokens
            hits = (stop_sequences[None] == NO_TOKEN) | (stop_sequences[None] == window[:, None])
            is_stop_string = jnp.any(jnp.all(hits, axis=-1), axis=-1) if stop_sequences.shape[0] else False
            count = count + live.astype(jnp.int32) * (~is_stop_token).astype(jnp.int32)
            reason = jnp.where(live & is_stop_token, FINISH_STOP_TOKEN,
                               jnp.where(live & is_stop_string, FINISH_STOP_STRING, reason))
            done = done | is_stop_token | is_stop_string
            x = model.llm.embed_tokens(token[:, None])
            hidden, cache = model.llm.hidden_states(x, (lengths + i)[:, None], jnp.ones((rows, 1), jnp.int32), cache)
            return i + 1, self._constrain(cache), model.llm.logits(hidden)[:, 0], tokens, done, reason, count

        state = (jnp.zeros((), jnp.int32), cache, logits, tokens, done, reason, count)
        _, _, _, tokens, _, reason, count = jax.lax.while_loop(cond, body, state)
        return tokens[:, width:], count, reason

    def generate(self, params, batch: dict, sampling: SamplingParams, *, stop_ids: Sequence[int],
                 stop_sequences: np.ndarray, active: np.ndarray, put=lambda x: x,
                 timings: dict | None = None) -> tuple[np.ndarray, ...]:
        """(tokens [B, N] with NO_TOKEN after a row's end, generated token count per row (stop token excluded),
        finish reason per row). `put` places host arrays on the mesh. `timings` (the decode benchmark): when a dict,
        the host waits for the prefill before starting the decode loop and records `prefill_s` (host-to-device copy
        + prefill) and `decode_s` (the whole on-device loop, one decoder step per generated token)."""
        n = bucket(sampling.max_new_tokens, MIN_NEW_BUCKET)
        start = time.perf_counter()
        model_batch = put({**batch, "done": ~active})
        logits, cache = self._prefill(params, model_batch, cache_length=batch["input_ids"].shape[1] + n)
        if timings is not None:
            jax.block_until_ready((logits, cache))
            prefilled = time.perf_counter()
            timings["prefill_s"] = prefilled - start
        tokens, count, reason = self._decode(
            params, cache, logits, model_batch["lengths"], model_batch["done"], jax.random.key(sampling.seed),
            jnp.float32(max(sampling.temperature, 1e-6)), jnp.float32(sampling.top_p),
            jnp.int32(sampling.max_new_tokens), jnp.asarray(np.asarray(stop_ids, np.int32)),
            jnp.asarray(stop_sequences), greedy=sampling.greedy, top_k=int(sampling.top_k), buffer_length=n)
        if timings is not None:
            jax.block_until_ready((tokens, count, reason))
            timings["decode_s"] = time.perf_counter() - prefilled
        return np.asarray(tokens), np.asarray(count), np.asarray(reason)
