import os

import jax
import numpy as np
import pytest
from flax import nnx

from oq2vl_jax import checkpoint_io as C
from oq2vl_jax.errors import UserError
from oq2vl_jax.models import params as P
from oq2vl_jax.models.presets import VLMConfig, llm_preset, vision_preset
from oq2vl_jax.models.vlm import VLM


def _config():
    return VLMConfig(vision=vision_preset("siglip-tiny"), llm=llm_preset("qwen2-tiny"), tokens_per_image=4)


def test_params_round_trip_bit_exact(tmp_path):
    tree = jax.tree.map(np.asarray, P.param_tree(VLM(_config(), rngs=nnx.Rngs(0))))
    tok = tmp_path / "tok"
    tok.mkdir()
    (tok / "tokenizer.json").write_text("{}")
    C.save_params(str(tmp_path / "ck"), tree, _config(), tokenizer_dir=str(tok))
    config, restored, meta = C.load_params(str(tmp_path / "ck"))
    assert config == _config() and meta["format"] == "oq2vl_jax"
    for a, b in zip(jax.tree.leaves(tree), jax.tree.leaves(restored)):
        assert np.asarray(b).dtype == a.dtype and np.array_equal(a, np.asarray(b))
    assert os.path.exists(os.path.join(C.tokenizer_path(str(tmp_path / "ck")), "tokenizer.json"))


def test_unfinished_step_is_ignored_and_missing_dirs_are_user_errors(tmp_path):
    tree = jax.tree.map(np.asarray, P.param_tree(VLM(_config(), rngs=nnx.Rngs(0))))
    C.save_params(str(tmp_path / "ck"), tree, _config(), step=3)
    # what an interrupted Orbax write leaves behind: a temporary step directory
    os.makedirs(tmp_path / "ck" / "7.orbax-checkpoint-tmp-123" / "params")
    assert C.resolve_step(str(tmp_path / "ck")) == 3
    with pytest.raises(UserError, match="does not exist"):
        C.resolve_step(str(tmp_path / "nope"))
    with pytest.raises(UserError, match="step 5 is not"):
        C.resolve_step(str(tmp_path / "ck"), 5)


def test_loading_params_and_items_logs_no_orbax_warnings(tmp_path, caplog):
    """Orbax warned 'Item "vision_extra" ... could not be restored' for every item it was not asked for."""
    tree = jax.tree.map(np.asarray, P.param_tree(VLM(_config(), rngs=nnx.Rngs(0))))
    ck = str(tmp_path / "ck")
    C.save_params(ck, tree, _config(), extra_items={C.VISION_EXTRA: {"head": np.arange(3, dtype=np.float32)}})
    caplog.clear()
    with caplog.at_level("WARNING"):
        _, restored, _ = C.load_params(ck)
        extra = C.load_item(ck, C.VISION_EXTRA)
    assert [r.getMessage() for r in caplog.records if r.levelname == "WARNING"] == []
    assert extra["head"].tolist() == [0, 1, 2]
    assert all(np.array_equal(a, b) for a, b in zip(jax.tree.leaves(tree), jax.tree.leaves(restored)))


def test_data_contract_refuses_a_change_and_reads_steps_saved_before_it():
    import json

    import ml_collections
    data = ml_collections.ConfigDict({"chat_format": "open_qwen2vl", "label_mode": "default"})
    saved = C.data_contract(data, "abc")
    C.check_data_contract(saved, C.data_contract(data, "abc"), "W/checkpoints/5")
    C.check_data_contract(saved, C.data_contract(data, None), "W/checkpoints/5")  # no tokenizer given: nothing to check
    for field, value in (("label_mode", "reference_compat"), ("chat_format", "qwen2")):
        other = ml_collections.ConfigDict({**data.to_dict(), field: value})
        with pytest.raises(UserError, match=f"data.{field}='{value}' but the run in W/checkpoints/5"):
            C.check_data_contract(saved, C.data_contract(other, "abc"), "W/checkpoints/5")
    with pytest.raises(UserError, match="another vocabulary"):
        C.check_data_contract(saved, C.data_contract(data, "xyz"), "W/checkpoints/5")
    # a step saved before the record: its training config says the chat format and label mode
    old = {"train_config": json.dumps({"data": {"chat_format": "qwen2", "label_mode": "default"}})}
    assert C.saved_data_contract(old) == {"tokenizer": None, "chat_format": "qwen2", "label_mode": "default"}
    assert C.saved_data_contract({C.DATA_CONTRACT: saved}) == saved
