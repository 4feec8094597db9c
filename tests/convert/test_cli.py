"""`python -m oq2vl_jax.convert`: every import / export form end to end, and one-line user errors."""

import json
import os
import subprocess
import sys

import numpy as np

from fixtures.convert import (assert_trees_equal, big_vision_from_hf, hf_llm, hf_vision,  # noqa: F401
                              hf_vision_state, tiny_tokenizer_dir)
from oq2vl_jax import checkpoint_io
from oq2vl_jax.convert.__main__ import EXIT_USER_ERROR, main


def _run(capsys, *argv):
    code = main(list(argv))
    out, err = capsys.readouterr()
    return code, out, err


def test_cli_round_trips(tmp_path, capsys, hf_llm, hf_vision, tiny_tokenizer_dir):
    npz = str(tmp_path / "siglip.npz")
    np.savez(npz, **big_vision_from_hf(hf_vision_state(hf_vision[1]), scanned=True))
    ck = str(tmp_path / "ck")
    code, out, err = _run(capsys, "import", "--llm", hf_llm[0], "--vision", npz, "--tokenizer", tiny_tokenizer_dir,
                          "--out", ck, "--pool", "49", "--gelu", "exact")
    assert code == 0, err
    assert "vision: big_vision" in out and "<s> (bos)=401" in out and "49 tokens per image" in out
    config, params, _ = checkpoint_io.load_params(ck)
    assert config.vision.hidden_act == "gelu" and config.vision.num_heads == 4

    for fmt, extra_args in (("prismatic", ["--with-vision", "--mount-path", "/models/local"]), ("hf-llava", [])):
        out_dir = str(tmp_path / fmt)
        code, out, err = _run(capsys, "export", "--ckpt", ck, "--to", fmt, "--out", out_dir, "--step", "0",
                              *extra_args)
        assert code == 0, err
        assert f"wrote {out_dir} (fp32)" in out
        if fmt == "prismatic":  # an offline user's LLM directory, not the hub organisation
            assert json.load(open(os.path.join(out_dir, "config.json")))["mount_path"] == "/models/local"
        back = str(tmp_path / f"back_{fmt}")
        code, out, err = _run(capsys, "import", "--from", fmt, out_dir, "--out", back)
        assert code == 0, err
        config_back, params_back, _ = checkpoint_io.load_params(back)
        assert config_back == config
        assert_trees_equal(params_back, params)
        assert_trees_equal(checkpoint_io.load_item(back, checkpoint_io.VISION_EXTRA),
                           checkpoint_io.load_item(ck, checkpoint_io.VISION_EXTRA))
        assert os.path.isfile(os.path.join(checkpoint_io.tokenizer_path(back), "tokenizer.json"))

    code, out, err = _run(capsys, "export", "--ckpt", ck, "--to", "hf-qwen2", "--out", str(tmp_path / "q"),
                          "--dtype", "bf16")
    assert code == 0 and "hf-qwen2: 1 weight file(s), tied embeddings" in out


def test_cli_user_errors(tmp_path, capsys, hf_llm):
    code, _, err = _run(capsys, "import", "--llm", hf_llm[0], "--vision", str(tmp_path / "missing.npz"),
                        "--out", str(tmp_path / "ck"))
    assert code == EXIT_USER_ERROR and err.count("\n") == 1 and "does not exist" in err
    code, _, err = _run(capsys, "export", "--ckpt", str(tmp_path / "nope"), "--to", "hf-qwen2", "--out", "x")
    assert code == EXIT_USER_ERROR and "does not exist" in err
    code, _, err = _run(capsys, "import", "--llm", hf_llm[0], "--vision", hf_llm[0], "--out", str(tmp_path / "ck"))
    assert code == EXIT_USER_ERROR and "neither an HF SigLIP directory" in err


def test_tokenizer_without_qwen2_tokens_is_refused(tmp_path, capsys, hf_llm, hf_vision):
    from tokenizers import Tokenizer, models, pre_tokenizers

    tok = Tokenizer(models.WordLevel({"a": 0, "[UNK]": 1}, unk_token="[UNK]"))
    tok.pre_tokenizer = pre_tokenizers.Whitespace()
    os.makedirs(tmp_path / "tok")
    tok.save(str(tmp_path / "tok" / "tokenizer.json"))
    (tmp_path / "tok" / "tokenizer_config.json").write_text('{"tokenizer_class": "PreTrainedTokenizerFast"}')
    code, _, err = _run(capsys, "import", "--llm", hf_llm[0], "--vision", hf_vision[0], "--tokenizer",
                        str(tmp_path / "tok"), "--out", str(tmp_path / "ck"))
    assert code == EXIT_USER_ERROR and "lacks the Qwen2 special tokens" in err
    assert not os.path.exists(tmp_path / "ck")


def test_module_entry_point_prints_one_line(tmp_path):
    proc = subprocess.run([sys.executable, "-m", "oq2vl_jax.convert", "export", "--ckpt", str(tmp_path), "--to",
                           "prismatic", "--out", str(tmp_path / "o")], capture_output=True, text=True, timeout=120)
    assert proc.returncode == EXIT_USER_ERROR
    assert proc.stderr.strip().startswith("error:") and "Traceback" not in proc.stderr
    assert "no finished oq2vl_jax checkpoint" in proc.stderr


HELP_CHECK = """
import contextlib, io, sys
from oq2vl_jax.convert.__main__ import main
for argv in ([\"--help\"], [\"import\", \"--help\"], [\"export\", \"--help\"]):
    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        try:
            main(argv)
        except SystemExit as e:
            assert e.code == 0, e.code
    print(\"=====\", \" \".join(argv)); print(out.getvalue())
"""


def test_help_has_every_subcommand_and_examples():
    top = subprocess.run([sys.executable, "-m", "oq2vl_jax.convert", "--help"], capture_output=True, text=True,
                         timeout=120)
    assert top.returncode == 0 and len(top.stdout.splitlines()) > 10, top.stdout
    assert "import --help" in top.stdout and "--from prismatic" in top.stdout and "--to prismatic" in top.stdout
    # the subcommands' help through the same entry function, in one process (each --help exits)
    proc = subprocess.run([sys.executable, "-c", HELP_CHECK], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr[-2000:]
    _, _, imp, exp = proc.stdout.split("=====")
    for option in ("--llm", "--vision", "--tokenizer", "--out", "--pool", "--from", "--gelu", "examples:",
                   "python -m oq2vl_jax.convert import --llm"):
        assert option in imp, option
    for option in ("--ckpt", "--to", "--dtype", "--step", "--with-vision", "--mount-path", "examples:",
                   "python -m oq2vl_jax.convert export --ckpt"):
        assert option in exp, option
