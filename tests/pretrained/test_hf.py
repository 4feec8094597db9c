"""HF Qwen2 + HF SigLIP -> oq2vl_jax checkpoint -> hf-qwen2 export, tensor files, configs, projector init, errors."""

import json
import os
import sys

import ml_dtypes
import numpy as np
import pytest
import torch
import transformers

from fixtures.convert import (assert_trees_equal, hf_llm, hf_qwen2_config, hf_vision, hf_vision_state,  # noqa: F401
                              imported_ckpt, numpy_state, tiny_tokenizer_dir)
from fixtures.model import randomize_
from oq2vl_jax import checkpoint_io
from oq2vl_jax.convert import exporter
from oq2vl_jax.convert.write_checkpoint import save_imported
from oq2vl_jax.pretrained import hf, importer, tensor_files
from oq2vl_jax.errors import UserError
from oq2vl_jax.models.presets import GELU_EXACT


def _read_dir(path):
    source = tensor_files.open_hf_weights(path)
    return {name: source.get(name) for name in source.names}


def test_import_export_hf_qwen2_reproduces_hf_tensors(tmp_path, hf_llm, imported_ckpt):
    llm_dir, model = hf_llm
    out = str(tmp_path / "qwen2")
    exporter.export(imported_ckpt, "hf-qwen2", out)
    written, original = _read_dir(out), numpy_state(model)
    original.pop("lm_head.weight")  # tied: HF does not save it either
    assert set(written) == set(original)
    for name, array in original.items():
        assert written[name].dtype == np.float32 and np.array_equal(written[name], array), name
    reloaded = transformers.Qwen2ForCausalLM.from_pretrained(out)
    assert torch.equal(reloaded.lm_head.weight, model.model.embed_tokens.weight)
    assert json.load(open(os.path.join(out, "config.json")))["rope_parameters"]["rope_theta"] == 1e6
    assert transformers.AutoTokenizer.from_pretrained(out).bos_token == "<s>"


def test_import_keeps_every_hf_siglip_tensor(hf_vision, imported_ckpt):
    """The blocks we run go to params, the rest (last block, post_layernorm, head) to vision_extra: writing both
    back in HF naming gives the source tensors exactly."""
    _, model = hf_vision
    config, params, _ = checkpoint_io.load_params(imported_ckpt)
    extra = checkpoint_io.load_item(imported_ckpt, checkpoint_io.VISION_EXTRA)
    assert config.vision.num_blocks_run == 2 and extra["blocks"]["q"]["kernel"].shape[0] == 1
    assert config.vision.hidden_act == GELU_EXACT and config.tokens_per_image == 49
    written = dict(hf.siglip_to_hf(params["vision"], prefix="", extra=extra))
    original = hf_vision_state(model)
    assert set(written) == set(original)
    for name, array in original.items():
        assert np.array_equal(written[name], array), name


def test_tokenizer_gets_reference_tokens(imported_ckpt):
    tok = transformers.AutoTokenizer.from_pretrained(checkpoint_io.tokenizer_path(imported_ckpt))
    base = 400
    assert tok.convert_tokens_to_ids(["<|endofchunk|>", "<s>"]) == [base, base + 1]
    assert tok.bos_token == "<s>" and tok.model_max_length == 4096
    _, meta = checkpoint_io.load_meta(imported_ckpt)
    assert meta["token_ids"]["bos"] == base + 1 and meta["llm_hf_config"]["model_type"] == "qwen2"


def test_untied_llm_and_bf16_export(tmp_path, hf_vision, tiny_tokenizer_dir):
    model = randomize_(transformers.Qwen2ForCausalLM(hf_qwen2_config(tied=False)).to(torch.bfloat16), seed=5)
    llm_dir = str(tmp_path / "llm")
    model.save_pretrained(llm_dir)  # bf16 safetensors, as the released Qwen2.5 files
    config, params = importer.import_pretrained(llm_dir, hf_vision[0], tokens_per_image=9)
    assert not config.llm.tie_word_embeddings and params["llm"]["lm_head"]["kernel"].dtype == np.float32
    assert np.array_equal(params["llm"]["lm_head"]["kernel"], model.lm_head.weight.detach().float().numpy().T)
    ckpt, out = str(tmp_path / "ck"), str(tmp_path / "out")
    save_imported(importer.Imported(config, params, {}, []), ckpt, tiny_tokenizer_dir)
    exporter.export(ckpt, "hf-qwen2", out, dtype="bf16")
    written = _read_dir(out)
    assert written["lm_head.weight"].dtype == ml_dtypes.bfloat16
    for name, tensor in model.state_dict().items():  # bf16 -> fp32 -> bf16 is exact
        assert np.array_equal(written[name].view(np.int16), tensor.view(torch.int16).numpy()), name


def test_projector_init_is_the_references(hf_llm, hf_vision):
    """torch.manual_seed(1152) then AvgPoolProjector's Sequential(Linear, GELU, Linear), as prismatic.py:56-72."""
    torch.manual_seed(1152)
    reference = torch.nn.Sequential(torch.nn.Linear(32, 64), torch.nn.GELU(), torch.nn.Linear(64, 64))
    _, params = importer.import_pretrained(hf_llm[0], hf_vision[0], tokens_per_image=9)
    assert np.array_equal(params["projector"]["fc1"]["kernel"], reference[0].weight.detach().numpy().T)
    assert np.array_equal(params["projector"]["fc2"]["bias"], reference[2].bias.detach().numpy())


def test_projector_init_without_torch(monkeypatch):
    monkeypatch.setitem(sys.modules, "torch", None)  # `import torch` now raises ImportError
    tree = importer.init_projector(32, 64, seed=7)
    assert tree["fc1"]["kernel"].shape == (32, 64) and tree["fc2"]["bias"].dtype == np.float32
    assert np.abs(tree["fc1"]["kernel"]).max() <= 32 ** -0.5 and np.abs(tree["fc2"]["kernel"]).max() <= 64 ** -0.5
    assert_trees_equal(tree, importer.init_projector(32, 64, seed=7))


def test_safetensors_writer_shards_and_reads_back(tmp_path):
    rng = np.random.default_rng(0)
    tensors = {f"t{i}": rng.standard_normal((i + 1, 7)).astype(np.float32) for i in range(6)}
    tensors["b"] = np.arange(5, dtype=np.int64)
    tensors["h"] = tensors["t0"].astype(ml_dtypes.bfloat16)
    files = tensor_files.write_safetensors(str(tmp_path), tensors.items(), max_shard_bytes=100)
    assert len(files) > 1 and os.path.isfile(tmp_path / "model.safetensors.index.json")
    assert not [f for f in os.listdir(tmp_path) if f.endswith(".tmp")]
    back = _read_dir(str(tmp_path))
    for name, array in tensors.items():
        assert back[name].dtype == array.dtype and np.array_equal(back[name], array), name
    from safetensors.torch import load_file  # the reference library reads our files

    assert torch.equal(load_file(str(tmp_path / files[0]))["t0"], torch.from_numpy(tensors["t0"]))


def test_qwen2_config_parsing():
    legacy = {"model_type": "qwen2", "vocab_size": 100, "hidden_size": 64, "intermediate_size": 96,
              "num_hidden_layers": 2, "num_attention_heads": 4, "num_key_value_heads": 2, "rope_theta": 1e6,
              "tie_word_embeddings": True, "rope_scaling": None}
    cfg = hf.qwen2_config_from_hf(legacy)
    assert cfg.head_dim == 16 and cfg.rope_theta == 1e6 and cfg.tie_word_embeddings
    assert hf.qwen2_config_from_hf(hf.qwen2_config_to_hf(cfg)) == cfg
    with pytest.raises(UserError, match="rope scaling"):
        hf.qwen2_config_from_hf({**legacy, "rope_scaling": {"rope_type": "yarn", "factor": 4.0}})
    with pytest.raises(UserError, match="model_type is 'llama'"):
        hf.qwen2_config_from_hf({**legacy, "model_type": "llama"})


def test_shape_mismatch_names_tensor_and_shapes(tmp_path, hf_llm):
    llm_dir = str(tmp_path / "llm")
    os.makedirs(llm_dir)
    for name in os.listdir(hf_llm[0]):
        os.link(os.path.join(hf_llm[0], name), os.path.join(llm_dir, name))
    config = json.load(open(os.path.join(llm_dir, "config.json")))
    os.remove(os.path.join(llm_dir, "config.json"))
    json.dump({**config, "intermediate_size": 80}, open(os.path.join(llm_dir, "config.json"), "w"))
    with pytest.raises(UserError, match=r"model.layers.0.mlp.gate_proj.weight' has shape \(96, 64\).*\(80, 64\)"):
        importer.load_llm(llm_dir)


def test_missing_files_are_user_errors(tmp_path, hf_llm):
    with pytest.raises(UserError, match="does not exist"):
        importer.load_llm(str(tmp_path / "nope"))
    with pytest.raises(UserError, match="no model.safetensors"):
        tensor_files.open_hf_weights(str(tmp_path))
    os.makedirs(tmp_path / "bad")
    os.link(os.path.join(hf_llm[0], "model.safetensors.index.json"), tmp_path / "bad" / "model.safetensors.index.json")
    with pytest.raises(UserError, match="names shard"):
        tensor_files.open_hf_weights(str(tmp_path / "bad"))


def test_export_reads_a_sharded_trainer_checkpoint(tmp_path, hf_llm, imported_ckpt):
    """Trainer steps hold jax arrays sharded over a mesh plus optimizer items; export restores them on the host."""
    import jax
    import orbax.checkpoint as ocp

    config, params, meta = checkpoint_io.load_params(imported_ckpt)
    mesh = jax.sharding.Mesh(np.array(jax.devices()[:2]), ("fsdp",))
    rows = jax.sharding.NamedSharding(mesh, jax.sharding.PartitionSpec("fsdp"))
    replicated = jax.sharding.NamedSharding(mesh, jax.sharding.PartitionSpec())
    sharded = jax.tree.map(lambda a: jax.device_put(a, rows if a.shape[0] % 2 == 0 else replicated), params)
    run = str(tmp_path / "run")
    handlers = {"params": ocp.StandardCheckpointHandler(), "meta": ocp.JsonCheckpointHandler(),
                "opt_state": ocp.StandardCheckpointHandler()}
    with ocp.CheckpointManager(run, item_handlers=handlers) as mngr:
        mngr.save(12, args=ocp.args.Composite(params=ocp.args.StandardSave(sharded), meta=ocp.args.JsonSave(meta),
                                              opt_state=ocp.args.StandardSave({"mu": sharded["projector"]})))
        mngr.wait_until_finished()
    out = str(tmp_path / "qwen2")
    lines = exporter.export(run, "hf-qwen2", out)
    assert "step 12" in lines[0]
    written, original = _read_dir(out), numpy_state(hf_llm[1])
    for name, array in written.items():
        assert np.array_equal(array, original[name]), name
