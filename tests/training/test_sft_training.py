"""From pre-training to SFT: a 729-token SFT run initialised from a 144-token pre-training checkpoint starts from the
projector, LLM and vision tower bit for bit, trains (loss goes down) on packed LLaVA conversations; 144 <-> 729 both
ways, sizes checked; rows without images run no vision tower."""

from __future__ import annotations

import os
import runpy

import jax
import numpy as np
import pytest

from fixtures.paths import REPO
from fixtures.data import tiny_tokenizer_dir  # noqa: F401 (fixture)
from oq2vl_jax import checkpoint_io, parallel
from oq2vl_jax.demo.sft import write_sft_demo
from oq2vl_jax.errors import UserError
from oq2vl_jax.models import vlm as vlm_lib
from oq2vl_jax.training import loop, metrics, setup, state as state_lib
from fixtures.training import FAST_COMPILE

IMAGE_SIZE = 54  # patch 2 -> the 27 x 27 grid of the real tower: 144 = 12 x 12 pooled, 729 = the full grid


def config(tokens_per_image: int, **init):
    c = runpy.run_path(os.path.join(REPO, "configs", "base.py"))["get_config"]()
    c.model.update(vision="siglip-tiny", vision_overrides=dict(patch_size=2, depth=2), llm="qwen2-tiny",
                   tokens_per_image=tokens_per_image, compute_dtype="float32", frozen_dtype="float32",
                   attention="xla", remat="none", vision_chunk=2, loss_chunk=256)
    c.init.update(init)
    c.data.update(image_size=IMAGE_SIZE, row_length=1024, pack_buffer=16, read_threads=1)
    c.train.update(stage="pretrain", num_steps=10, global_batch_rows=2, micro_batches=1, log_every=100,
                   eval_every=0)
    c.optim.update(lr=3e-3, warmup_ratio=0.0)
    c.mesh.update(data=1, fsdp=-1, tensor=1)
    c.checkpoint.update(every_steps=100, keep=1, async_save=False)
    c.log.tensorboard = False
    return c


@pytest.fixture(scope="module")
def pretrained(tmp_path_factory, tiny_tokenizer_dir):  # noqa: F811 (fixture)
    """A 144-token "pre-training" checkpoint (random weights, as `convert import` or a pre-training run leaves)."""
    pre = config(144, source="random")
    pre.data.tokenizer_dir = tiny_tokenizer_dir
    vlm = setup.random_model_config(pre)
    assert vlm.tokens_per_image == 144 and vlm.vision.grid == 27
    rng = np.random.default_rng(3)  # random weights made on the host: no compile
    abstract = state_lib.ModelParts(vlm, setup.model_options(pre.model)).abstract_params  # norms: scale 1
    params = state_lib.ModelParts(vlm, setup.model_options(pre.model)).map_params(
        lambda path, x: (np.ones(x.shape) if path.endswith("scale") else 0.05 * rng.standard_normal(x.shape))
        .astype(x.dtype), abstract)
    ckpt = str(tmp_path_factory.mktemp("pretrain") / "checkpoints")
    checkpoint_io.save_params(ckpt, params, vlm, tokenizer_dir=tiny_tokenizer_dir)
    return ckpt, params


def sft_config(ckpt: str, tmp_path, tokens: int = 729):
    c = config(tokens, source="checkpoint", init_from=ckpt)
    paths = write_sft_demo(str(tmp_path / "sft"), num_train=24, num_eval=2, image_size=IMAGE_SIZE, seed=0,
                           text_only_every=3)
    c.data.sources = ({"kind": "llava", "path": paths["train"], "image_root": paths["image_root"]},)
    return c


@pytest.mark.slow
def test_sft_from_144_token_checkpoint_starts_bit_equal_and_trains(pretrained, tmp_path):
    ckpt, saved = pretrained
    cfg = sft_config(ckpt, tmp_path)
    workdir = str(tmp_path / "run")
    # the trainer's own initialisation path, stopped before the first update
    vlm, imported = setup.resolve_model_config(cfg)
    assert vlm.tokens_per_image == 729 and imported is None
    parts = state_lib.ModelParts(vlm, setup.model_options(cfg.model))
    mesh = parallel.build_mesh(cfg.mesh, jax.devices()[:2])
    tx, abstract, _ = setup.optimizer_and_state(cfg, parts, mesh)
    params = setup.initial_params(cfg, parts, mesh, abstract, None, FAST_COMPILE)
    state = state_lib.init_state(params, parts, "pretrain", "float32", tx, mesh, FAST_COMPILE)
    loaded = jax.device_get(state_lib.merge_params(state.trainable, state.frozen))
    assert sorted(state.trainable) == ["llm", "projector"] and sorted(state.frozen) == ["vision"]
    flat_saved = jax.tree_util.tree_leaves_with_path(saved)
    flat_loaded = dict(jax.tree_util.tree_leaves_with_path(loaded))
    assert len(flat_saved) == len(flat_loaded)
    for path, value in flat_saved:
        assert flat_loaded[path].dtype == value.dtype and np.array_equal(flat_loaded[path], value), path

    result = loop.run(cfg, workdir, devices=jax.devices()[:2], compiler_options=FAST_COMPILE)
    assert result.model_config.tokens_per_image == 729 and result.last_step == 10
    losses = [r["loss"] for r in metrics.read_metrics(workdir) if "loss" in r]
    assert np.mean(losses[-3:]) < 0.9 * np.mean(losses[:3]), losses
    _, meta = checkpoint_io.load_meta(result.checkpoint_dir)
    assert meta["model_config"]["tokens_per_image"] == 729


def test_tokens_per_image_both_ways_and_checked(pretrained):
    """The trainer's init path (training/setup.py): 144 -> 729 and back, an impossible size or a wrong image size is
    one error naming the field."""
    ckpt, _ = pretrained
    up, _ = setup.resolve_model_config(config(729, source="checkpoint", init_from=ckpt))
    assert up.tokens_per_image == 729
    down = setup.with_tokens_per_image(up, 144, "a 729-token checkpoint")
    assert down.tokens_per_image == 144 and down.replace(tokens_per_image=729) == up
    with pytest.raises(UserError, match="model.tokens_per_image"):
        setup.resolve_model_config(config(730, source="checkpoint", init_from=ckpt))
    bad = config(729, source="checkpoint", init_from=ckpt)
    bad.data.image_size = 384
    with pytest.raises(UserError, match="data.image_size=384"):
        setup.resolve_model_config(bad)


@pytest.mark.slow
def test_rows_without_images_run_no_vision_tower(monkeypatch):
    """The vision tower runs per chunk of image slots under lax.cond: a micro-batch whose rows hold no image never
    enters it (counted with a host callback inside the tower call, which fires only when the branch runs)."""
    calls = []
    original = vlm_lib.VLM.image_embeddings

    def counted(self, images):
        jax.debug.callback(lambda: calls.append(1))
        return original(self, images)

    monkeypatch.setattr(vlm_lib.VLM, "image_embeddings", counted)
    cfg = config(16)
    cfg.model.vision_overrides = dict(depth=2)
    cfg.data.image_size = 32  # patch 4: an 8 x 8 grid pooled to 4 x 4
    vlm = setup.preset_model_config(cfg, 512)
    parts = state_lib.ModelParts(vlm, setup.model_options(cfg.model))
    mesh = parallel.build_mesh(dict(data=1, fsdp=1, tensor=1), jax.devices()[:1])
    params = parts.random_params(0, mesh, FAST_COMPILE)
    forward = jax.jit(lambda p, b: parts.model(p)(b), compiler_options=FAST_COMPILE)
    rows, length = 2, 64
    batch = {"input_ids": np.ones((rows, length), np.int32), "segment_ids": np.ones((rows, length), np.int32),
             "positions": np.tile(np.arange(length, dtype=np.int32), (rows, 1)),
             "image_mask": np.zeros((rows, length), bool),
             "images": np.full((rows, 4, 32, 32, 3), 128, np.uint8), "image_valid": np.zeros((rows, 4), bool)}
    text_only = np.asarray(forward(params, batch))
    jax.effects_barrier()
    assert calls == [] and np.isfinite(text_only).all()
    batch["image_valid"][1, 0] = True  # one image in row 1: one chunk of slots (of 2) runs the tower
    batch["image_mask"][1, 10:26] = True
    with_image = np.asarray(forward(params, batch))
    jax.effects_barrier()
    assert len(calls) == 1
    np.testing.assert_array_equal(with_image[0], text_only[0])  # row 0 (text only) is unaffected
