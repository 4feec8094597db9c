import pytest

from oq2vl_jax.errors import UserError
from oq2vl_jax.models.presets import (LLM_PRESETS, ModelOptions, VLMConfig, llm_preset, open_qwen2vl, vision_preset)


def test_so400m_numbers():
    v = vision_preset("siglip-so400m-384")
    assert (v.width, v.depth, v.mlp_dim, v.num_heads, v.patch_size, v.image_size) == (1152, 27, 4304, 16, 14, 384)
    assert (v.grid, v.num_patches, v.num_blocks_run, v.layer_norm_eps, v.hidden_act) == (27, 729, 26, 1e-6, "gelu")


def test_qwen25_15b_numbers():
    q = llm_preset("qwen2.5-1.5b")
    assert (q.hidden_size, q.num_layers, q.num_heads, q.num_kv_heads, q.head_dim, q.intermediate_size,
            q.vocab_size, q.rope_theta, q.rms_norm_eps, q.tie_word_embeddings) == \
        (1536, 28, 12, 2, 128, 8960, 151936, 1e6, 1e-6, True)
    assert set(LLM_PRESETS) >= {"qwen2.5-0.5b", "qwen2.5-1.5b", "qwen2.5-3b", "qwen2.5-7b"}


def test_config_round_trips_through_dict():
    cfg = open_qwen2vl(729)
    assert VLMConfig.from_dict(cfg.to_dict()) == cfg


@pytest.mark.parametrize("tokens", [0, 101, 784])
def test_bad_tokens_per_image_is_a_user_error(tokens):
    with pytest.raises(UserError, match="tokens_per_image"):
        open_qwen2vl(tokens).validate()


def test_bad_names_are_user_errors():
    with pytest.raises(UserError, match="unknown llm preset"):
        llm_preset("qwen3")
    with pytest.raises(UserError, match="model.attention"):
        ModelOptions(attention="flash").validate()
    with pytest.raises(UserError, match="unknown Qwen2Config fields"):
        VLMConfig.from_dict({**open_qwen2vl().to_dict(), "llm": {"hidden": 3}})
