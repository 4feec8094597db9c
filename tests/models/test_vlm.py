"""The VLM on packed rows vs a composed PyTorch reference (HF SigLIP -> torch pooling/MLP -> splice -> HF Qwen2)."""

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import torch
from flax import nnx

from fixtures.model import (TorchProjector, hf_qwen2, hf_siglip, projector_tree, qwen2_tree, siglip_tree,
                            tiny_qwen2_config, tiny_siglip_config, to_numpy)
from oq2vl_jax.batch import validate_batch
from oq2vl_jax.models import params as P
from oq2vl_jax.models.presets import ModelOptions, VLMConfig, open_qwen2vl
from oq2vl_jax.models.vlm import VLM

T_IMG = 9  # 7x7 patch grid pooled to 3x3: overlapping windows, like 27 -> 12
L = 80


class TorchVLM:
    def __init__(self):
        self.vcfg, self.lcfg = tiny_siglip_config(), tiny_qwen2_config(tied=True)
        self.siglip, self.qwen = hf_siglip(self.vcfg), hf_qwen2(self.lcfg)
        self.projector = TorchProjector(self.vcfg.width, self.lcfg.hidden_size, pool=3)

    def tree(self):
        return {"vision": siglip_tree(self.siglip, self.vcfg), "projector": projector_tree(self.projector),
                "llm": qwen2_tree(self.qwen, self.lcfg)}

    @torch.no_grad()
    def logits(self, ids, image_positions, images, position_ids=None):
        """One sequence: ids [T]; image_positions: list of T_IMG-long index blocks; images uint8 [n, H, W, 3]."""
        x = self.qwen.model.embed_tokens(torch.from_numpy(ids).long())[None]
        if len(images):
            pixels = (torch.from_numpy(images).float() / 255.0 - 0.5) / 0.5
            feats = self.siglip(pixel_values=pixels.permute(0, 3, 1, 2), output_hidden_states=True).hidden_states[-2]
            emb = self.projector(feats)
            for k, block in enumerate(image_positions):
                x[0, block] = emb[k]
        pos = None if position_ids is None else torch.from_numpy(position_ids).long()[None]
        return to_numpy(self.qwen(inputs_embeds=x, position_ids=pos).logits[0])


def _packed_row(rng):
    """Three documents (two images, text only, one image) then padding; image slots [a, invalid, b, c, invalid]."""
    docs = []
    ids1 = rng.integers(1, 256, 20); docs.append((ids1, [np.arange(1, 1 + T_IMG)]))
    ids2 = rng.integers(1, 256, 12); docs.append((ids2, []))
    ids3 = rng.integers(1, 256, 33); docs.append((ids3, [np.arange(1, 1 + T_IMG), np.arange(14, 14 + T_IMG)]))
    images = rng.integers(0, 256, size=(5, 28, 28, 3), dtype=np.uint8)
    valid = np.array([True, False, True, True, False])
    row = {k: np.zeros(L, dt) for k, dt in (("input_ids", np.int32), ("segment_ids", np.int32),
                                             ("positions", np.int32), ("image_mask", np.bool_))}
    start = 0
    for seg, (ids, blocks) in enumerate(docs, 1):
        n = len(ids)
        row["input_ids"][start:start + n] = ids
        row["segment_ids"][start:start + n] = seg
        row["positions"][start:start + n] = np.arange(n)
        for block in blocks:
            row["image_mask"][start + block] = True
        start += n
    return docs, row, images, valid


def _batch(rows, images, valid):
    batch = {k: np.stack([r[k] for r in rows]) for k in rows[0]}
    batch["images"], batch["image_valid"] = np.stack(images), np.stack(valid)
    return batch


@pytest.fixture(scope="module")
def setup():
    ref = TorchVLM()
    config = VLMConfig(vision=ref.vcfg, llm=ref.lcfg, tokens_per_image=T_IMG)
    rng = np.random.default_rng(0)
    docs, row, images, valid = _packed_row(rng)
    # second row: the same documents in another order of images, fewer valid slots
    row2 = dict(row)
    batch = _batch([row, row2], [images, images[[2, 0, 3, 1, 4]]], [valid, np.array([True, True, True, False, False])])
    validate_batch(batch, T_IMG)
    return ref, config, docs, batch


@pytest.mark.parametrize("vision_chunk", [1, 2, 8])
def test_packed_row_equals_each_document_alone(setup, vision_chunk):
    ref, config, docs, batch = setup
    model = P.vlm_from_params(config, ref.tree(), ModelOptions(vision_chunk=vision_chunk, attention="xla"))
    got = np.asarray(jax.jit(lambda m, b: m(b))(model, batch))
    slot_images = {0: batch["images"][0][[0, 2, 3]], 1: batch["images"][1][[0, 1, 2]]}
    for r in range(2):
        start, k = 0, 0
        for ids, blocks in docs:
            want = ref.logits(ids, blocks, slot_images[r][k:k + len(blocks)])
            k += len(blocks)
            n = len(ids)
            assert np.abs(got[r, start:start + n] - want).max() <= 1e-4
            start += n


def test_reference_compat_equals_whole_row_plain_causal(setup):
    ref, config, docs, batch = setup
    model = P.vlm_from_params(config, ref.tree(), ModelOptions(reference_compat=True, attention="xla"))
    got = np.asarray(model(batch))[0]
    blocks = [np.flatnonzero(batch["image_mask"][0])[i:i + T_IMG] for i in range(0, 3 * T_IMG, T_IMG)]
    want = ref.logits(batch["input_ids"][0], blocks, batch["images"][0][[0, 2, 3]],
                      position_ids=np.arange(L))
    real = batch["segment_ids"][0] > 0  # the reference drops padding; causal attention never looks ahead at it
    assert np.abs(got[real] - want[real]).max() <= 1e-4
    default = np.asarray(P.vlm_from_params(config, ref.tree(), ModelOptions(attention="xla"))(batch))[0]
    assert np.abs(default[real] - want[real]).max() > 1e-2  # per-document masking really differs


def test_loss_is_chunked_cross_entropy_of_logits(setup):
    ref, config, _, batch = setup
    rng = np.random.default_rng(3)
    batch = dict(batch, targets=rng.integers(0, 256, size=(2, L)).astype(np.int32),
                 loss_weights=(rng.random((2, L)) < 0.7).astype(np.float32))
    model = P.vlm_from_params(config, ref.tree(), ModelOptions(loss_chunk=7, attention="xla"))
    total, weight = model.loss(batch)
    logits = np.asarray(model(batch), np.float64)
    logp = logits - np.log(np.exp(logits - logits.max(-1, keepdims=True)).sum(-1, keepdims=True)) - \
        logits.max(-1, keepdims=True)
    nll = -np.take_along_axis(logp, batch["targets"][..., None], -1)[..., 0]
    np.testing.assert_allclose(float(total), (nll * batch["loss_weights"]).sum(), rtol=1e-5)
    assert float(weight) == batch["loss_weights"].sum()


def test_padding_image_chunks_are_skipped_not_computed(setup):
    """Invalid slots hold garbage pixels: results do not change, and the vision tower sits behind a cond."""
    ref, config, _, batch = setup
    model = P.vlm_from_params(config, ref.tree(), ModelOptions(vision_chunk=1, attention="xla"))
    noisy = dict(batch, images=np.where(batch["image_valid"][:, :, None, None, None], batch["images"], 255))
    np.testing.assert_array_equal(np.asarray(model(batch)), np.asarray(model(noisy)))
    jaxpr = str(jax.make_jaxpr(lambda b: model.embed(b))(batch))
    assert "cond[" in jaxpr


def test_real_size_builds_abstractly():
    model = P.abstract_vlm(open_qwen2vl(144))
    sizes = {k: int(np.prod(v.shape)) for k, v in P.flatten(P.param_tree(model)).items()}
    assert sum(v for k, v in sizes.items() if k.startswith("llm/")) == 1_543_714_304
    assert sum(v for k, v in sizes.items() if k.startswith("projector/")) == 1152 * 1536 + 1536 + 1536 * 1536 + 1536
    assert open_qwen2vl(729).pool_size == 27 and open_qwen2vl(144).pool_size == 12
