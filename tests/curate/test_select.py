"""Selection rules over score tables equal hand-computed sets: thresholds, top fraction with the original's seeded
tie rule, MLM-Filter score text parsing, DataComp uid lists, basic filters, and / or / union; stale inputs refused."""

import os
import random

import numpy as np
import pytest

from fixtures.curate import N, uid_of, write_datacomp_shards
from oq2vl_jax.curate import select, shards as shards_lib
from oq2vl_jax.data.sources.selection import read_selection
from oq2vl_jax.data.sources.webdataset import WebDatasetSource
from oq2vl_jax.errors import UserError

SCORES = [0.9, 0.5, 0.5, 0.1, 0.7, 0.5, 0.3, 0.8, 0.5, 0.2]
MLM_TEXT = ["85", "85,", "90\nbecause", "junk", "", "84", "100", " 86", "85;", None]
MLM_STATUS = ["success"] * 8 + ["failed_to_download", "success"]


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    root = write_datacomp_shards(str(tmp_path_factory.mktemp("dc")))
    tables = str(tmp_path_factory.mktemp("tables"))
    assert shards_lib.write_key_tables(root, tables) == 2
    assert shards_lib.write_key_tables(root, tables) == 0  # resumable: current tables are kept
    _, names = shards_lib.list_shards(root)
    for s, name in enumerate(names):
        rows = list(shards_lib.iter_samples(os.path.join(root, name), want_image=False))
        cols = shards_lib.row_columns(rows)
        cols["score"] = SCORES[s * 5:(s + 1) * 5]
        from oq2vl_jax.data.sources.selection import shard_fingerprint
        shards_lib.write_table(shards_lib.table_path(tables, name, "clip"), cols, shard_fingerprint(root, name))
        # the original's MLM-Filter layout: {8 digits}_{task}.parquet with uid, {task}_score text, status
        mlm = {"uid": [uid_of(i) for i in range(s * 5, s * 5 + 5)],
               "semantic_understanding_score": MLM_TEXT[s * 5:s * 5 + 5], "status": MLM_STATUS[s * 5:s * 5 + 5]}
        shards_lib.write_table(os.path.join(tables, "mlm", f"{s:08d}_semantic_understanding.parquet"), mlm, [])
    uids = np.array([divmod(int(uid_of(i), 16), 2 ** 64) for i in (9, 3)] + [(1, 2)], "u8,u8")
    uids.sort()
    np.save(os.path.join(tables, "subset.npy"), uids)
    return root, tables


def selected_numbers(root, out):
    source = WebDatasetSource(root)
    from oq2vl_jax.data.sources.selection import SelectedSource
    sel = SelectedSource(source, out)
    return sorted(int(sel[i]["documents"][0]["parts"][1][1].split()[1]) for i in range(len(sel)))


def run(data, rule, tmp_path):
    root, tables = data
    out = str(tmp_path / "sel.npz")
    select.select(root, tables, rule, out)
    return selected_numbers(root, out)


def test_threshold(data, tmp_path):
    assert run(data, {"table": "clip", "min": 0.5}, tmp_path) == [0, 1, 2, 4, 5, 7, 8]


def test_top_fraction_without_and_with_ties(data, tmp_path):
    # 0.3: n = 3, threshold = sorted desc[3] = 0.5 with 3 rows above -> tie probability 0
    assert run(data, {"table": "clip", "top_fraction": 0.3}, tmp_path) == [0, 4, 7]
    # 0.5: n = 5, threshold 0.5, 3 above, 4 ties (rows 1, 2, 5, 8) each kept with p = 2/4 from Random(42) in row order
    rng = random.Random(42)
    draws = [rng.random() < 0.5 for _ in range(4)]
    assert draws == [False, True, True, True]  # 0.639, 0.025, 0.275, 0.223
    assert run(data, {"table": "clip", "top_fraction": 0.5}, tmp_path) == [0, 2, 4, 5, 7, 8]


def test_mlm_parsing_threshold_and_status(data, tmp_path):
    rule = {"mlm": os.path.join(data[1], "mlm"), "task": "semantic_understanding", "min": 85}
    # "85" "85," "90\n..." "100" " 86" parse and pass; "junk" "" None fail; "84" too low; "85;" failed download
    assert run(data, rule, tmp_path) == [0, 1, 2, 6, 7]


def test_uids_basic_and_union(data, tmp_path):
    subset = {"uids": os.path.join(data[1], "subset.npy")}
    mlm = {"mlm": os.path.join(data[1], "mlm"), "task": "semantic_understanding", "min": 85}
    assert run(data, subset, tmp_path) == [3, 9]
    assert run(data, {"basic": {"min_side": 10, "max_aspect": 4}}, tmp_path) == [0, 1, 2, 3, 5, 7, 8, 9]
    assert run(data, {"union": [mlm, subset]}, tmp_path) == [0, 1, 2, 3, 6, 7, 9]
    assert run(data, {"and": [{"or": [mlm, subset]}, {"basic": {}}]}, tmp_path) == [0, 1, 2, 3, 7, 9]


def test_selection_file_is_small_and_tied_to_the_shards(data, tmp_path):
    root, tables = data
    out = str(tmp_path / "sel.npz")
    counts = select.select(root, tables, {"table": "clip", "min": 0.85}, out)
    assert counts == {"rows": N, "selected": 1, "shards": 1}
    meta, shard, offset = read_selection(out)
    assert [s[0] for s in meta["shards"]] == ["00000000.tar"] and shard.tolist() == [0]
    with pytest.raises(UserError, match="not a selection"):
        bad = tmp_path / "user.npz"
        bad.write_bytes(b"mine")
        select.select(root, tables, {"table": "clip", "min": 0.85}, str(bad))
    assert bad.read_bytes() == b"mine"


def test_stale_table_and_selection_are_refused(tmp_path):
    root = write_datacomp_shards(str(tmp_path / "dc"))
    tables = str(tmp_path / "t")
    shards_lib.write_key_tables(root, tables)
    out = str(tmp_path / "sel.npz")
    select.select(root, tables, {"basic": {}}, out)
    st = os.stat(os.path.join(root, "00000001.tar"))
    os.utime(os.path.join(root, "00000001.tar"), ns=(st.st_atime_ns, st.st_mtime_ns + 10 ** 9))
    with pytest.raises(UserError, match="stale"):
        selected_numbers(root, out)
    with pytest.raises(UserError, match="stale"):
        select.select(root, tables, {"basic": {}}, out)


def test_bad_rules_are_one_line(data, tmp_path):
    for rule, match in (({"table": "clip"}, "min"), ({"nope": 1}, "unknown rule"),
                        ({"table": "clip", "top_fraction": 1.5}, "top_fraction"),
                        ({"mlm": data[1], "task": "x", "min": 1}, "task must be")):
        with pytest.raises(UserError, match=match):
            select.select(data[0], data[1], rule, str(tmp_path / "s.npz"))


def test_uid_pairs_equal_the_originals_divmod():
    rng = np.random.default_rng(0)
    uids = [f"{int(rng.integers(0, 2 ** 62)) * 4 + 3:016x}{int(rng.integers(0, 2 ** 62)):016x}" for _ in range(50)]
    uids += ["F" * 32, "0" * 32, "abc", "not-hex-not-hex-not-hex-not-hex!", "s000001", None, "1" * 40]
    got = select.uid_pairs(uids)
    for u, (hi, lo) in zip(uids, got.tolist()):
        try:
            want = divmod(int(u, 16), 2 ** 64)
            want = want if want[0] < 2 ** 64 else (0, 0)
        except (TypeError, ValueError):
            want = (0, 0)
        assert (hi, lo) == want, u
