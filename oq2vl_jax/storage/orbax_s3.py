"""Orbax checkpoints in a bucket: gs:// natively, s3:// through TensorStore's own s3 driver.

Orbax 0.12 writes array data through TensorStore and picks the kvstore driver from the path: `gs://` gets the GCS
driver, anything else the local `file` driver, which cannot write `s3://` (it also folds `s3://` into `s3:/`).
TensorStore has an `s3` driver; `use_s3_driver()` routes `s3://` paths to it (bucket, key prefix, and the endpoint,
region and credentials of the standard AWS environment, which TensorStore does not read by itself), through the two
functions Orbax uses to choose and build the spec. Everything else Orbax does on a bucket (metadata, JSON items,
listing steps) goes through `etils.epath`, which reaches s3:// through fsspec / s3fs.

A bucket has no atomic rename, so steps in a bucket are published the way Orbax publishes them on GCS: written in
place and finished by a `commit_success.txt` object; a step without it is never listed and is removed at the next
start (`checkpoint_manager_options`).
"""

from __future__ import annotations

import os

from oq2vl_jax.errors import UserError
from oq2vl_jax.storage.paths import is_remote

_installed = False


def s3_kvstore_spec(path: str) -> dict:
    """TensorStore's s3 kvstore for `s3://bucket/key/prefix`, configured from the standard AWS environment."""
    bucket, _, key = path[len("s3://"):].partition("/")
    spec = {"driver": "s3", "bucket": bucket, "path": key}
    endpoint = os.environ.get("AWS_ENDPOINT_URL_S3") or os.environ.get("AWS_ENDPOINT_URL")
    if endpoint:
        spec["endpoint"] = endpoint
    region = os.environ.get("AWS_REGION") or os.environ.get("AWS_DEFAULT_REGION")
    if region:
        spec["aws_region"] = region
    if os.environ.get("AWS_ACCESS_KEY_ID"):  # else TensorStore's default chain (profile, instance metadata)
        spec["aws_credentials"] = {"type": "environment"}
    return spec


def use_s3_driver() -> None:
    """Lets Orbax write and read array data at s3:// paths (idempotent; module docstring)."""
    global _installed
    if _installed:
        return
    from orbax.checkpoint._src.path import gcs_utils
    from orbax.checkpoint._src.serialization import tensorstore_utils as tsu

    needed = (getattr(tsu, "_use_gcs_driver", None), getattr(tsu, "_normalize_path", None),
              getattr(gcs_utils, "get_kvstore_for_gcs", None))
    if not all(needed):
        import orbax.checkpoint
        raise UserError(f"orbax-checkpoint {orbax.checkpoint.__version__} does not have the kvstore hooks this "
                        "project uses for s3:// checkpoints; install the version in requirements.txt")
    use_gcs, normalize, gcs_spec = needed

    def use_remote_driver(directory: str) -> bool:
        return directory.startswith("s3://") or use_gcs(directory)

    def normalize_path(path: str) -> str:
        if path.startswith("s3://"):
            return "s3://" + os.path.normpath(path[len("s3://"):])
        return normalize(path)

    def kvstore_spec(path: str) -> dict:
        return s3_kvstore_spec(path) if path.startswith("s3://") else gcs_spec(path)

    tsu._use_gcs_driver, tsu._normalize_path, gcs_utils.get_kvstore_for_gcs = (
        use_remote_driver, normalize_path, kvstore_spec)
    _installed = True


def prepare(directory) -> None:
    """Before Orbax reads or writes `directory`: the s3 driver for an s3:// one (a no-op otherwise)."""
    if str(directory).startswith("s3://"):
        use_s3_driver()


def checkpoint_manager_options(directory: str, **kwargs):
    """`ocp.CheckpointManagerOptions(**kwargs)`, publishing steps by a commit object in a bucket (no rename)."""
    import orbax.checkpoint as ocp
    from orbax.checkpoint._src.path import atomicity

    if is_remote(directory):
        prepare(directory)
        kwargs["temporary_path_class"] = atomicity.CommitFileTemporaryPath
    return ocp.CheckpointManagerOptions(**kwargs)
