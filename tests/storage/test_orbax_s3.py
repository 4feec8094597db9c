"""storage/orbax_s3.py: Orbax checkpoints in an S3 bucket (moto) through TensorStore's s3 driver, configured from the
standard AWS environment only, published by their commit object (a step without it is not a step)."""

import numpy as np
from orbax.checkpoint._src.path import atomicity

from oq2vl_jax import checkpoint_io
from oq2vl_jax.models.presets import VLMConfig
from oq2vl_jax.storage import orbax_s3, paths
from fixtures.s3 import bucket, s3_server  # noqa: F401 (fixtures)


def test_kvstore_spec_comes_from_the_environment(monkeypatch):
    for name in ("AWS_ENDPOINT_URL_S3", "AWS_REGION"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("AWS_ENDPOINT_URL", "http://127.0.0.1:9")
    monkeypatch.setenv("AWS_DEFAULT_REGION", "eu-west-1")
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "k")
    assert orbax_s3.s3_kvstore_spec("s3://b/run/checkpoints/1/params") == {
        "driver": "s3", "bucket": "b", "path": "run/checkpoints/1/params", "endpoint": "http://127.0.0.1:9",
        "aws_region": "eu-west-1", "aws_credentials": {"type": "environment"}}
    monkeypatch.delenv("AWS_ACCESS_KEY_ID")  # no keys: TensorStore's default chain (profiles, instance metadata)
    assert "aws_credentials" not in orbax_s3.s3_kvstore_spec("s3://b/x")


def test_steps_in_a_bucket_are_published_by_a_commit_object_not_a_rename(tmp_path):
    remote = orbax_s3.checkpoint_manager_options("s3://b/run/checkpoints", max_to_keep=2)
    local = orbax_s3.checkpoint_manager_options(str(tmp_path), max_to_keep=2)
    assert remote.temporary_path_class is atomicity.CommitFileTemporaryPath and remote.max_to_keep == 2
    assert local.temporary_path_class is None  # Orbax's default on a disk: write aside, then rename


def test_checkpoint_steps_are_published_by_their_commit_object(bucket, tmp_path):
    config = _tiny_config()
    params = {"llm": {"w": np.arange(12, dtype=np.float32).reshape(3, 4)}, "vision": {"b": np.ones(3, np.float32)}}
    ckpt = bucket + "/ckpt"
    assert checkpoint_io.save_params(ckpt, params, config, step=0) == ckpt + "/0"
    checkpoint_io.save_params(ckpt, {k: {n: a + 1 for n, a in v.items()} for k, v in params.items()}, config, step=1)
    assert checkpoint_io.resolve_step(ckpt) == 1
    _, loaded, meta = checkpoint_io.load_params(ckpt, 0)
    np.testing.assert_array_equal(loaded["llm"]["w"], params["llm"]["w"])
    assert meta["format"] == checkpoint_io.FORMAT
    paths.remove(ckpt + "/1/commit_success.txt")  # as if the writer died before publishing step 1
    assert checkpoint_io.resolve_step(ckpt) == 0


def _tiny_config() -> VLMConfig:
    from oq2vl_jax.models.presets import llm_preset, vision_preset
    return VLMConfig(vision=vision_preset("siglip-tiny"), llm=llm_preset("qwen2-tiny"), tokens_per_image=4)
