"""MLM-Filter scoring through the inference API: with a tiny random model, the texts written to the original's
per-shard tables equal a plain greedy decode (two full forward passes of the VLM) of the original's prompt."""

import dataclasses
import os

import jax
import numpy as np
import pyarrow.parquet as pq
import pytest
from flax import nnx

from fixtures.curate import write_datacomp_shards
from oq2vl_jax.curate import mlm_filter, mlm_score, shards as shards_lib
from oq2vl_jax.data.pipeline import model_vocab_size
from oq2vl_jax.demo.shapes import write_demo_dataset
from oq2vl_jax.inference import VLMInference
from oq2vl_jax.inference.sampler import pack_prompts
from oq2vl_jax.models.params import param_tree
from oq2vl_jax.models.presets import ModelOptions, VLMConfig, llm_preset, vision_preset
from oq2vl_jax.models.vlm import VLM


@pytest.mark.slow
def test_tables_hold_the_greedy_decode_of_the_original_prompt(tmp_path):
    tok_dir = write_demo_dataset(str(tmp_path / "demo"), num_train=2, num_eval=1, num_sft=1)["tokenizer_dir"]
    vocab = model_vocab_size({"tokenizer_dir": tok_dir})
    config = VLMConfig(vision=vision_preset("siglip-tiny"),
                       llm=dataclasses.replace(llm_preset("qwen2-tiny"), vocab_size=vocab), tokens_per_image=9)
    model = VLM(config, ModelOptions(attention="xla"), rngs=nnx.Rngs(3))
    vlm = VLMInference(config, param_tree(model), tok_dir, compute_dtype="float32", attention="xla")
    root = write_datacomp_shards(str(tmp_path / "dc"))
    out = str(tmp_path / "mlm")
    counts = mlm_filter.score_shards(mlm_score.inference_generate(vlm, batch_size=4), root, out,
                                     tasks=("image_text_matching",))
    assert counts["written"] == 2 and counts["samples"] == 10
    table = pq.read_table(os.path.join(out, "00000000_image_text_matching.parquet")).to_pydict()
    samples = list(shards_lib.iter_samples(os.path.join(root, "00000000.tar")))
    forward = jax.jit(lambda m, b: m(b))
    for s, text in list(zip(samples, table["image_text_matching_score"]))[:2]:
        prompt = mlm_score.build_prompt(vlm, s["caption"], "image_text_matching", s["image"])
        assert [int(t) for t, m in zip(prompt.document.ids, prompt.document.image_mask) if not m] == [
            t for t in mlm_filter.prompt_ids(vlm.encoder.encode, s["caption"], "image_text_matching", -1,
                                             vlm.encoder.encode(" ")[-1]) if t != -1]
        ids = []
        for _ in range(mlm_filter.MAX_NEW_TOKENS):
            layout = prompt.document._replace(ids=np.r_[prompt.document.ids, ids].astype(np.int32),
                                              image_mask=np.r_[prompt.document.image_mask, np.zeros(len(ids), bool)])
            batch = pack_prompts([dataclasses.replace(prompt, document=layout)], rows=1, pad_id=vlm.encoder.pad_id,
                                 image_size=config.vision.image_size)
            n = int(batch.pop("lengths")[0])
            ids.append(int(np.argmax(np.asarray(forward(model, batch))[0, n - 1])))
            if ids[-1] in vlm.stop_ids:
                break
        assert text == vlm.tokenizer.decode(ids, skip_special_tokens=True)
