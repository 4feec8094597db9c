"""The VLM: images + packed text rows -> logits or loss. Consumes the batch contract of `oq2vl_jax/batch.py`.

Flow per batch: valid images are moved to the front of each row's slots; the vision tower runs over slot chunks of
`vision_chunk` and skips (with `lax.cond`) any chunk in which no row holds a valid image; features are pooled and
projected to `tokens_per_image` embeddings per image; the k-th valid image of a row fills the k-th block of
`tokens_per_image` positions marked in `image_mask`; the decoder runs with per-document causal attention and RoPE at
`positions` (or, with `reference_compat`, plain causal attention over the whole row and positions 0..L-1).
"""

from __future__ import annotations

from typing import Mapping

import jax
import jax.numpy as jnp
from flax import nnx
from jax.sharding import PartitionSpec as P

from oq2vl_jax.models import layers
from oq2vl_jax.models.attention import BATCH_MESH_AXES
from oq2vl_jax.models.cache import KVCache
from oq2vl_jax.models.losses import chunked_cross_entropy
from oq2vl_jax.models.presets import ModelOptions, VLMConfig
from oq2vl_jax.models.projector import Projector
from oq2vl_jax.models.qwen2 import Qwen2
from oq2vl_jax.models.siglip import SiglipTower

PIXEL_MEAN = 0.5
PIXEL_STD = 0.5


def normalize_pixels(images: jax.Array) -> jax.Array:
    """uint8 RGB -> (x/255 - 0.5)/0.5 in float32, the reference's timm transform."""
    return (images.astype(jnp.float32) / 255.0 - PIXEL_MEAN) / PIXEL_STD


# rows over the batch mesh axes: images and their embeddings are per-row data, never worth replicating
_ROWS = ("activation_batch", "activation_length", "activation_embed")


def _device_varying(x: jax.Array, axes: tuple[str, ...]) -> jax.Array:
    """Inside shard_map: mark a replicated input as differing per device (the transpose sums the gradient here)."""
    if not axes:
        return x
    if hasattr(jax.lax, "pvary"):
        return jax.lax.pvary(x, axes)
    return jax.lax.pcast(x, axes, to="varying")


class VLM(nnx.Module):
    def __init__(self, config: VLMConfig, options: ModelOptions = ModelOptions(), *, rngs: nnx.Rngs):
        config.validate()
        options.validate()
        self.config, self.options = config, options
        dtype = jnp.dtype(options.compute_dtype)
        self.vision = SiglipTower(config.vision, options, rngs=rngs)
        self.projector = Projector(config.vision.width, config.llm.hidden_size, dtype=dtype, rngs=rngs)
        self.llm = Qwen2(config.llm, options, rngs=rngs)

    def image_embeddings(self, images: jax.Array) -> jax.Array:
        """uint8 [N, H, W, 3] -> [N, tokens_per_image, llm hidden]."""
        return self.projector(self.vision(normalize_pixels(images)), self.config.pool_size)

    def _row_image_embeddings(self, images: jax.Array, image_valid: jax.Array) -> jax.Array:
        """[B, M, H, W, 3], [B, M] -> [B, M' * T, D]: valid images first (in slot order), M' = M rounded up to chunks."""
        b, m = image_valid.shape
        c = min(self.options.vision_chunk, m)
        order = jnp.argsort(~image_valid, axis=1, stable=True)
        images = jnp.take_along_axis(images, order[:, :, None, None, None], axis=1)
        valid = jnp.take_along_axis(image_valid, order, axis=1)
        pad = (-m) % c
        if pad:
            images = jnp.pad(images, ((0, 0), (0, pad), (0, 0), (0, 0), (0, 0)))
            valid = jnp.pad(valid, ((0, 0), (0, pad)))
        steps = (m + pad) // c
        chunks = images.reshape(b, steps, c, *images.shape[2:]).swapaxes(0, 1).reshape(steps, b * c, *images.shape[2:])
        chunk_valid = valid.reshape(b, steps, c).swapaxes(0, 1).reshape(steps, b * c)
        t, d = self.config.tokens_per_image, self.config.llm.hidden_size
        dtype = jnp.dtype(self.options.compute_dtype)

        def run(xs):
            imgs, ok = xs
            return jax.lax.cond(jnp.any(ok), lambda x: layers.constrain(self.image_embeddings(x).astype(dtype), _ROWS),
                                lambda x: jnp.zeros((b * c, t, d), dtype), imgs)

        chunks = layers.constrain(chunks, (None, "activation_batch", None, None, None))
        emb = jax.lax.map(run, (chunks, chunk_valid))  # [steps, B*c, T, D]
        emb = layers.constrain(emb, (None, "activation_batch", None, None))
        emb = emb.reshape(steps, b, c, t, d).swapaxes(0, 1).reshape(b, steps * c * t, d)
        return layers.constrain(emb, _ROWS)

    def embed(self, batch: Mapping[str, jax.Array]) -> jax.Array:
        """Token embeddings with image embeddings spliced in at `image_mask` positions: [B, L, D]."""
        x = layers.constrain(self.llm.embed_tokens(batch["input_ids"]), _ROWS)
        image_mask = batch["image_mask"]
        flat = self._row_image_embeddings(batch["images"], batch["image_valid"])
        index = jnp.clip(jnp.cumsum(image_mask, axis=1) - 1, 0, flat.shape[1] - 1)
        spliced = layers.constrain(jnp.take_along_axis(flat, index[:, :, None], axis=1), _ROWS)
        return layers.constrain(jnp.where(image_mask[:, :, None], spliced.astype(x.dtype), x), _ROWS)

    def _positions_and_segments(self, batch):
        segment_ids, positions = batch["segment_ids"], batch["positions"]
        if self.options.reference_compat:
            b, l = segment_ids.shape
            positions = jnp.broadcast_to(jnp.arange(l, dtype=jnp.int32), (b, l))
            segment_ids = (segment_ids > 0).astype(jnp.int32)
        return positions, segment_ids

    def hidden_states(self, batch: Mapping[str, jax.Array], cache: KVCache | None = None):
        """[B, L, D]; with a KV cache (generation: one document per row at its own `positions`), also the updated
        cache (see `Qwen2.hidden_states`)."""
        if cache is not None:
            return self.llm.hidden_states(self.embed(batch), batch["positions"], batch["segment_ids"], cache)
        positions, segment_ids = self._positions_and_segments(batch)
        return self.llm.hidden_states(self.embed(batch), positions, segment_ids)

    def __call__(self, batch: Mapping[str, jax.Array]) -> jax.Array:
        """float32 logits [B, L, vocab]. For training use `loss`, which never materialises them."""
        return self.llm.logits(self.hidden_states(batch))

    def loss(self, batch: Mapping[str, jax.Array]) -> tuple[jax.Array, jax.Array]:
        """(sum of loss_weights * NLL(targets), sum of loss_weights): the trainer divides for a token-weighted mean."""
        hidden = self.hidden_states(batch)
        kernel, layout = self.llm.unembed_kernel()
        kernel = kernel.astype(hidden.dtype)
        chunk = self.options.loss_chunk
        args = (hidden, batch["targets"], batch["loss_weights"])
        mesh = jax.sharding.get_abstract_mesh()
        axes = () if mesh is None or mesh.empty else tuple(
            a for a in BATCH_MESH_AXES if a in mesh.axis_names and mesh.shape[a] > 1)
        if not axes:
            return chunked_cross_entropy(hidden, kernel, layout, *args[1:], chunk)

        # On a mesh: each device walks the chunks of its own rows with the whole output projection, gathered once
        # from its stored sharding; the gradient stays local over the chunks and is reduce-scattered back to that
        # sharding once per micro-batch (GSPMD would all-reduce a replicated [vocab, D] gradient in every chunk).
        names = ("vocab", "embed") if layout == "vd" else ("embed", "vocab")
        spec = layers.partition_spec(names, kernel.shape) or P()
        spec_axes = [() if e is None else (e,) if isinstance(e, str) else tuple(e) for e in spec]
        spec_axes += [()] * (kernel.ndim - len(spec_axes))
        sharded_over = {a for entry in spec_axes for a in entry}

        def local(h, k, t, w):
            # varying over the batch axes the kernel is replicated on: its gradient is summed over them here, once
            k = _device_varying(k, tuple(a for a in axes if a not in sharded_over))
            for dim, entry in enumerate(spec_axes):
                if entry:  # all_gather's transpose is a reduce-scatter
                    k = jax.lax.all_gather(k, entry if len(entry) > 1 else entry[0], axis=dim, tiled=True)
            nll, weight = chunked_cross_entropy(h, k, layout, t, w, chunk)
            return nll[None], weight[None]

        rows = P(axes)
        kernel_spec = P(*[None if not e else e[0] if len(e) == 1 else e for e in spec_axes])
        nll, weight = jax.shard_map(local, mesh=mesh, in_specs=(rows, kernel_spec, rows, rows),
                                    out_specs=(rows, rows))(hidden, kernel, *args[1:])
        return jnp.sum(nll), jnp.sum(weight)
