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


def test_a_resume_with_another_contract_or_tokenizer_is_refused():
    import json

    from oq2vl_jax.text import contract as contract_lib

    default = contract_lib.TRAINED_DEFAULT
    meta = C.contract_meta(default, tokenizer="abc")
    C.check_resumed_data(meta, default, "abc", "W/checkpoints/5")
    C.check_resumed_data(meta, default, None, "W/checkpoints/5")  # no tokenizer given: the checkpoint's copy is used
    for field, value in (("label_mode", "reference_compat"), ("chat_format", "qwen2")):
        other = contract_lib.PromptContract(**{**default.to_dict(), field: value})
        with pytest.raises(UserError, match=f"data.{field}='{value}' but the run in W/checkpoints/5"):
            C.check_resumed_data(meta, other, "abc", "W/checkpoints/5")
    with pytest.raises(UserError, match="another vocabulary"):
        C.check_resumed_data(meta, default, "xyz", "W/checkpoints/5")
    # a step saved before the record: its training config names the contract; its tokenizer copy's fingerprint
    old = {"train_config": json.dumps({"data": {"chat_format": "qwen2", "label_mode": "default"}})}
    with pytest.raises(UserError, match="data.chat_format='open_qwen2vl' but"):
        C.check_resumed_data(old, default, None, "W/checkpoints/5")
    with pytest.raises(UserError, match="another vocabulary"):
        C.check_resumed_data({}, default, "xyz", "W/checkpoints/5", saved_tokenizer="abc")
    C.check_resumed_data({}, contract_lib.PromptContract("qwen2"), None, "W")  # nothing recorded: nothing to compare
    assert not C.saved_tokenizer_recorded(old) and C.saved_tokenizer_recorded(meta)
