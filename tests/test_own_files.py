"""own_files: what a command may resume (our JSONL records, a cut last line of ours) and what it must refuse."""

import os

import pytest

from oq2vl_jax import own_files
from oq2vl_jax.errors import UserError


def read(path):
    return own_files.read_own_jsonl(str(path), is_record=lambda r: "step" in r, prefix='{"step": ', what="ours",
                                    hint="move it")


def test_our_records_and_a_cut_last_line_of_ours(tmp_path):
    path = tmp_path / "m.jsonl"
    assert read(path) == ([], 0)  # missing: nothing yet
    path.write_text("")
    assert read(path) == ([], 0)
    path.write_text('{"step": 1}\n\n{"step": 2}\n')
    assert read(path) == ([{"step": 1}, {"step": 2}], len(path.read_bytes()))
    complete = len(path.read_bytes())
    for cut in ('{"step": 3, "lo', '{"st', '{"step": 3}'):  # no newline: the writer died on this line
        path.write_text('{"step": 1}\n\n{"step": 2}\n' + cut)
        assert read(path) == ([{"step": 1}, {"step": 2}], complete)
        assert own_files.cut_partial_tail(str(path), complete) and path.read_bytes().endswith(b'{"step": 2}\n')
        assert not own_files.cut_partial_tail(str(path), complete)


@pytest.mark.parametrize("text, line", [
    ("buy milk\n{call Bob", 1),  # the user's notes
    ('{"step": 1}\nnotes', 2),  # a cut last line that is not one of ours
    ('{"step": 1}\n{"other": 2}\n', 2),  # JSON, but not our record
    ('{"step": 1}\n[1]\n{"step": 2}\n', 2),
    ("notes", 1),
])
def test_anything_else_is_refused_untouched(tmp_path, text, line):
    path = tmp_path / "m.jsonl"
    path.write_text(text)
    with pytest.raises(UserError, match=f"{path} is not ours \\(line {line} is not one of its records\\); move it"):
        read(path)
    assert path.read_text() == text


def test_entries_and_new_directories(tmp_path):
    (tmp_path / "1").mkdir()
    (tmp_path / "notes.txt").write_text("x")
    (tmp_path / "zz").mkdir()
    with pytest.raises(UserError, match=r"notes.txt \(and 1 more\) was not written by us; hint"):
        own_files.check_own_entries(str(tmp_path), str.isdigit, what="us", hint="hint")
    own_files.check_own_entries(str(tmp_path / "missing"), str.isdigit, what="us", hint="hint")
    own_files.check_new_directory(str(tmp_path / "new"), "--out")
    own_files.check_new_directory(str(tmp_path / "1"), "--out")  # empty
    with pytest.raises(UserError, match="--out .* exists and is not empty"):
        own_files.check_new_directory(str(tmp_path), "--out")
    with pytest.raises(UserError, match="--out .* is a file"):
        own_files.check_new_directory(str(tmp_path / "notes.txt"), "--out")
    assert sorted(os.listdir(tmp_path)) == ["1", "notes.txt", "zz"]
