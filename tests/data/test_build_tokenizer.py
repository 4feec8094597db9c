"""`python -m oq2vl_jax.data.build_tokenizer`: a tokenizer from one's own shards, through the real command."""

import os
import subprocess
import sys

from fixtures.paths import REPO
from fixtures.data import write_numbered_shards
from oq2vl_jax.text.documents import TextEncoder, caption_document
from oq2vl_jax.text.tokens import load_tokenizer



def cli(*args):
    return subprocess.run([sys.executable, "-m", "oq2vl_jax.data.build_tokenizer", *args], cwd=REPO,
                          capture_output=True, text=True, timeout=120)


def test_builds_a_loadable_tokenizer_from_shards_and_refuses_a_used_directory(tmp_path):
    shards = write_numbered_shards(str(tmp_path / "shards"), 40, shard_size=10)
    out = tmp_path / "tok"
    proc = cli(os.path.join(shards, "{00000..00002}.tar"), shards + "/00003.tar", "--out", str(out),
               "--vocab-size", "600")
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert f"--config.data.tokenizer_dir={out}" in proc.stdout
    tokenizer = load_tokenizer(str(out))
    encoder = TextEncoder.from_tokenizer(tokenizer)
    assert tokenizer.decode(encoder.encode("sample 17 is a red circle")) == "sample 17 is a red circle"
    assert len(encoder.encode("sample 17 is a red circle")) < len("sample 17 is a red circle") // 2  # merges learned
    assert caption_document(tokenizer, "sample 3", 4).length > 4

    again = cli(shards, "--out", str(out), "--vocab-size", "600")
    assert again.returncode == 2 and str(out) in again.stderr and "refusing" in again.stderr
    assert "Traceback" not in again.stderr
    assert sorted(os.listdir(tmp_path)) == ["shards", "tok"]  # no temporary directory left
