"""The batch contract end to end: a packed batch from the Grain pipeline runs through the VLM forward and loss."""

import dataclasses

import jax
import numpy as np
from flax import nnx

from oq2vl_jax.batch import validate_batch
from oq2vl_jax.data.pipeline import build_iterator, model_vocab_size
from oq2vl_jax.demo.shapes import write_demo_dataset
from oq2vl_jax.models.presets import ModelOptions, VLMConfig, llm_preset, vision_preset
from oq2vl_jax.models.vlm import VLM


def test_pipeline_batch_runs_through_the_vlm(tmp_path):
    paths = write_demo_dataset(str(tmp_path / "demo"), num_train=24, num_eval=4, image_size=40, num_sft=2)
    data = {"sources": [{"kind": "webdataset", "path": paths["train"], "weight": 1.0}],
            "tokenizer_dir": paths["tokenizer_dir"], "image_size": 28, "row_length": 96, "pack_buffer": 16,
            "read_threads": 1}
    vocab = model_vocab_size(data)
    config = VLMConfig(vision=vision_preset("siglip-tiny"),
                       llm=dataclasses.replace(llm_preset("qwen2-tiny"), vocab_size=vocab), tokens_per_image=9)
    batch = next(build_iterator(data, tokens_per_image=config.tokens_per_image, rows_per_batch=2, seed=0))
    validate_batch(batch, config.tokens_per_image, require_loss=True)
    assert batch["image_valid"].sum() >= 2 and batch["input_ids"].max() < vocab
    model = VLM(config, ModelOptions(attention="xla"), rngs=nnx.Rngs(0))
    arrays = {k: v for k, v in batch.items() if k != "stats"}
    total, weight = jax.jit(lambda m, b: m.loss(b))(model, arrays)
    assert float(weight) == float(batch["loss_weights"].sum()) > 0
    mean = float(total) / float(weight)
    assert np.isfinite(mean) and abs(mean - np.log(vocab)) < 1.5  # an untrained model is near-uniform
