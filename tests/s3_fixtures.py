"""A real S3-compatible server on 127.0.0.1 for the bucket tests (moto's server mode, in a thread of this process).

`s3_server` starts it once per test process on a free port and points the standard AWS environment at it
(AWS_ENDPOINT_URL, dummy keys, region): every reader of that environment (s3fs, boto, TensorStore through
oq2vl_jax.storage.orbax_s3, subprocesses started by the test) reaches it, nothing else is configured. `bucket` gives
each test a fresh bucket. Needs moto, flask and s3fs (requirements.txt, the `test` extra).
"""

from __future__ import annotations

import itertools
import os

import pytest

_ENV = {"AWS_ACCESS_KEY_ID": "testing", "AWS_SECRET_ACCESS_KEY": "testing", "AWS_DEFAULT_REGION": "us-east-1"}
_count = itertools.count()


@pytest.fixture(scope="session")
def s3_server():
    from moto.server import ThreadedMotoServer

    server = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    server.start()
    host, port = server.get_host_and_port()
    env = {**_ENV, "AWS_ENDPOINT_URL": f"http://{host}:{port}"}
    saved = {k: os.environ.get(k) for k in env}
    os.environ.update(env)
    import fsspec
    fsspec.filesystem("s3").clear_instance_cache()  # instances made before would keep another endpoint
    try:
        yield env
    finally:
        for k, v in saved.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v
        server.stop()


@pytest.fixture
def bucket(s3_server) -> str:
    """s3://<a new, empty bucket>."""
    import fsspec
    name = f"oq2vl-test-{os.getpid()}-{next(_count)}"
    fsspec.filesystem("s3").mkdir(f"s3://{name}")
    return f"s3://{name}"
