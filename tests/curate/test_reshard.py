"""The resharder writes the selected samples (all members, repeats as "{uid}-{j}") in `{:08d}.tar` shards."""

import os

import numpy as np
import pytest

from fixtures.curate import uid_of, write_datacomp_shards
from oq2vl_jax.curate import reshard, select, shards as shards_lib
from oq2vl_jax.data.sources.selection import read_selection, write_selection
from oq2vl_jax.errors import UserError


def test_reshard_layout_and_repeats(tmp_path):
    root = write_datacomp_shards(str(tmp_path / "dc"))
    tables = str(tmp_path / "t")
    shards_lib.write_key_tables(root, tables)
    sel = str(tmp_path / "sel.npz")
    select.select(root, tables, {"basic": {}}, sel)  # all but samples 4 and 6
    meta, shard, offset = read_selection(sel)
    twice = str(tmp_path / "twice.npz")  # sample 0 listed twice
    write_selection(twice, root=root, shards=meta["shards"], shard=np.r_[shard, shard[:1]],
                    image_offset=np.r_[offset, offset[:1]], rule={}, counts={})
    out = str(tmp_path / "out")
    assert reshard.reshard(twice, out, shard_size=3) == {"samples": 9, "shards": 3}
    assert sorted(os.listdir(out)) == ["00000000.tar", "00000001.tar", "00000002.tar"]
    got = [s for name in sorted(os.listdir(out)) for s in shards_lib.iter_samples(os.path.join(out, name))]
    keep = [0, 1, 2, 3, 5, 7, 8, 9]
    assert [s["key"] for s in got] == [f"{uid_of(0)}-0", f"{uid_of(0)}-1"] + [f"{uid_of(i)}-0" for i in keep[1:]]
    assert all(set(s["members"]) == {"jpg", "txt", "json"} for s in got)
    assert [int(s["caption"].split()[1]) for s in got] == [0] + keep
    with pytest.raises(UserError, match="not empty"):
        reshard.reshard(twice, out)


def test_cli_keys_select_reshard_as_documented(tmp_path, capsys):
    """The documented commands through the entry point's main() (flags as a user types them)."""
    import json
    from oq2vl_jax.curate.__main__ import main
    root = write_datacomp_shards(str(tmp_path / "dc"))
    tables, sel, out = str(tmp_path / "tables"), str(tmp_path / "sel.npz"), str(tmp_path / "new")
    assert main(["keys", "--shards", root, "--out", tables]) == 0
    rule = tmp_path / "rule.json"
    rule.write_text('{"and": [{"union": [{"uids": "%s"}]}, {"basic": {"min_side": 10, "max_aspect": 4}}]}'
                    % str(tmp_path / "subset.npy"))
    np.save(tmp_path / "subset.npy", np.sort(np.array([divmod(int(uid_of(i), 16), 2 ** 64) for i in (1, 4, 8)],
                                                      "u8,u8")))
    assert main(["select", "--shards", os.path.join(root, "*.tar"), "--tables", tables, "--rule", str(rule),
                 "--out", sel]) == 0
    assert main(["reshard", "--selection", sel, "--out", out]) == 0
    lines = [json.loads(x) for x in capsys.readouterr().out.strip().splitlines()]
    assert lines == [{"written": 2}, {"rows": 10, "selected": 2, "shards": 2}, {"samples": 2, "shards": 1}]
    got = list(shards_lib.iter_samples(os.path.join(out, "00000000.tar")))
    assert [s["key"] for s in got] == [f"{uid_of(1)}-0", f"{uid_of(8)}-0"]  # sample 4 fails the basic filter
