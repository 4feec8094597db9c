"""The demo's held-out attribute score (oq2vl_jax/demo/attributes.py), with stand-in models whose predictions
are known: an oracle that predicts every next token scores 100 %, one that predicts token 0 everywhere scores 0 %."""

import jax.numpy as jnp
import numpy as np
import pytest

from oq2vl_jax.demo import attributes as demo_attributes, shapes as demo

VOCAB = 1024  # above the tiny tokenizer's size


@pytest.fixture(scope="module")
def demo_paths(tmp_path_factory):
    return demo.write_demo_dataset(str(tmp_path_factory.mktemp("demo")), num_train=48, num_eval=12, image_size=16,
                                   seed=5, num_sft=1)


def _score(apply, paths):
    return demo_attributes.attribute_scores(apply, {}, paths, paths["tokenizer_dir"], tokens_per_image=4,
                                            row_length=64, image_size=16)


def test_an_oracle_names_every_attribute_and_a_constant_model_none(demo_paths):
    def oracle(params, batch):  # the logits of position p point at the input token at p + 1
        nxt = jnp.concatenate([batch["input_ids"][:, 1:], batch["input_ids"][:, :1]], axis=1)
        return jax_one_hot(nxt)

    scores = _score(oracle, demo_paths)
    assert scores["with_images"] == scores["blank_images"] == {a: 1.0 for a in demo_attributes.ATTRIBUTES}
    zeros = _score(lambda params, batch: jax_one_hot(jnp.zeros_like(batch["input_ids"])), demo_paths)
    assert zeros["with_images"] == {a: 0.0 for a in demo_attributes.ATTRIBUTES}
    blind = scores["image_blind_best"]
    assert set(blind) == set(demo_attributes.ATTRIBUTES) and all(0.0 <= v <= 1.0 for v in blind.values())
    lines = demo_attributes.score_lines(scores)
    assert lines[0] == "held-out attributes, with images: colour 100.0%, shape 100.0%, position 100.0%"


def jax_one_hot(ids):
    return jnp.asarray(np.eye(VOCAB, dtype=np.float32))[ids]
