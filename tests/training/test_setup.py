"""Before the first step (oq2vl_jax/training/setup.py): init.source=checkpoint honours model.tokens_per_image (the
pool has no parameters: the same weights at another pooled size, what SFT needs), a size the patch grid cannot pool
to and a data.image_size the tower does not take are one-line errors; a resumed run keeps its tokens_per_image."""

import jax
import numpy as np
import pytest

from fixtures.convert import GRID, hf_llm, hf_vision, imported_ckpt, tiny_tokenizer_dir  # noqa: F401 (fixtures)
from oq2vl_jax import checkpoint_io, parallel
from oq2vl_jax.errors import UserError
from oq2vl_jax.training import setup
from oq2vl_jax.training.state import ModelParts
from fixtures.training import tiny_config


def checkpoint_init_config(init_from: str, tokens_per_image: int):
    config = tiny_config(num_steps=1, eval_every=0, global_batch_rows=4, micro_batches=1)
    config.mesh.update(data=1, fsdp=1)
    config.init.update(source="checkpoint", init_from=init_from)
    config.model.tokens_per_image = tokens_per_image
    return config


@pytest.mark.parametrize("tokens_per_image", [9, GRID * GRID])  # 729 -> 144 in the real model, and back
def test_checkpoint_init_takes_the_runs_tokens_per_image_with_the_same_parameters(imported_ckpt,  # noqa: F811
                                                                                  tokens_per_image):
    config = checkpoint_init_config(imported_ckpt, tokens_per_image)
    vlm, _ = setup.resolve_model_config(config)
    saved_config, saved, _ = checkpoint_io.load_params(imported_ckpt)
    assert saved_config.tokens_per_image == GRID * GRID
    assert vlm == saved_config.replace(tokens_per_image=tokens_per_image)
    parts = ModelParts(vlm, setup.model_options(config.model))
    mesh = parallel.build_mesh(config.mesh, jax.devices()[:1])
    _, abstract, _ = setup.optimizer_and_state(config, parts, mesh)
    params = setup.initial_params(config, parts, mesh, abstract, None, None)
    # bit-equal: trained towers in float32, frozen ones as stored for training (model.frozen_dtype)
    jax.tree.map(lambda a, b: np.testing.assert_array_equal(np.asarray(a), np.asarray(b).astype(np.asarray(a).dtype)),
                 jax.device_get(params), saved)
    assert {np.asarray(a).dtype.name for a in jax.tree.leaves(jax.device_get(params["projector"]))} == {"float32"}


def test_checkpoint_init_errors(imported_ckpt):  # noqa: F811
    with pytest.raises(UserError, match=r"model.tokens_per_image: tokens_per_image=10 must be a square"):
        setup.resolve_model_config(checkpoint_init_config(imported_ckpt, 10))
    with pytest.raises(UserError, match=r"1 <= n <= 7"):
        setup.resolve_model_config(checkpoint_init_config(imported_ckpt, 64))  # 8x8 from a 7x7 patch grid
    config = checkpoint_init_config(imported_ckpt, 9)
    config.data.image_size = 32
    with pytest.raises(UserError, match=r"data.image_size=32 .* takes 28x28 images; set --config.data.image_size=28"):
        setup.resolve_model_config(config)


def test_a_resumed_run_keeps_its_tokens_per_image(imported_ckpt):  # noqa: F811
    _, meta = checkpoint_io.load_meta(imported_ckpt)
    config = checkpoint_init_config("", GRID * GRID)
    assert setup.resumed_model_config(config, meta, "RUN").tokens_per_image == GRID * GRID
    config.model.tokens_per_image = 9
    with pytest.raises(UserError, match="resume with --config.model.tokens_per_image=49"):
        setup.resumed_model_config(config, meta, "RUN")
