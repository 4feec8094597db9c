"""A webdataset source with "select" reads exactly the selected samples through the pipeline, repeats rows listed
twice, and its iterator state saves and restores exactly."""

import json
import os

import numpy as np
import pytest

from fixtures.data import (base_config, sample_numbers, tiny_tokenizer, tiny_tokenizer_dir,  # noqa: F401
                           write_numbered_shards)
from oq2vl_jax.curate import shards as shards_lib
from oq2vl_jax.data import pipeline
from oq2vl_jax.data.sources.selection import SelectedSource, shard_fingerprint, write_selection
from oq2vl_jax.data.sources.webdataset import WebDatasetSource
from oq2vl_jax.errors import UserError

T = 8
N = 40
CHOSEN = [1, 2, 3, 5, 8, 13, 21, 22, 34, 39]


@pytest.fixture(scope="module")
def selected(tmp_path_factory):
    root = write_numbered_shards(str(tmp_path_factory.mktemp("numbered")), N, shard_size=16)
    rows = []
    _, names = shards_lib.list_shards(root)
    for s, name in enumerate(names):
        for sample in shards_lib.iter_samples(os.path.join(root, name), want_image=False):
            number = int(sample["caption"].split()[1])
            rows.append((s, sample["image_offset"], number))
    pick = [r for r in rows if r[2] in CHOSEN]
    out = str(tmp_path_factory.mktemp("sel") / "sel.npz")
    write_selection(out, root=root, shards=[shard_fingerprint(root, n) for n in names],
                    shard=np.array([r[0] for r in pick]), image_offset=np.array([r[1] for r in pick]), rule={},
                    counts={})
    twice = str(tmp_path_factory.mktemp("sel") / "twice.npz")
    write_selection(twice, root=root, shards=[shard_fingerprint(root, n) for n in names],
                    shard=np.array([r[0] for r in pick] * 2), image_offset=np.array([r[1] for r in pick] * 2),
                    rule={}, counts={})
    return root, out, twice


def spec(root, select):
    return {"kind": "webdataset", "path": root, "select": select}


def test_source_yields_exactly_the_selection(selected):
    root, out, twice = selected
    source = SelectedSource(WebDatasetSource(root), out)
    assert len(source) == len(CHOSEN)
    numbers = [int(source[i]["documents"][0]["parts"][1][1].split()[1]) for i in range(len(source))]
    assert sorted(numbers) == CHOSEN
    assert len(SelectedSource(WebDatasetSource(root), twice)) == 2 * len(CHOSEN)


def test_pipeline_reads_selection_and_restores_state(selected, tiny_tokenizer_dir, tiny_tokenizer):
    root, out, twice = selected
    cfg = base_config(tiny_tokenizer_dir, [spec(root, out)], num_epochs=1)
    kwargs = dict(tokens_per_image=T, rows_per_batch=2, seed=0, process_index=0, process_count=1)
    full = list(pipeline.build_iterator(cfg, **kwargs))
    assert sorted(n for b in full for n in sample_numbers(b, tiny_tokenizer)) == CHOSEN
    it = pipeline.build_iterator(base_config(tiny_tokenizer_dir, [spec(root, twice)], num_epochs=2), **kwargs)
    head = [next(it) for _ in range(2)]
    state = json.loads(json.dumps(it.get_state()))
    tail = list(it)
    numbers = [n for b in head + tail for n in sample_numbers(b, tiny_tokenizer)]
    assert sorted(numbers) == sorted(CHOSEN * 4)  # listed twice, two epochs
    restored = pipeline.build_iterator(base_config(tiny_tokenizer_dir, [spec(root, twice)], num_epochs=2), **kwargs)
    restored.set_state(state)
    again = list(restored)
    assert len(again) == len(tail)
    for a, b in zip(again, tail):
        for k in a:
            if k != "stats":
                np.testing.assert_array_equal(a[k], b[k], err_msg=k)


def test_missing_selection_names_the_field(selected, tiny_tokenizer_dir):
    root, _, _ = selected
    cfg = base_config(tiny_tokenizer_dir, [spec(root, "/nonexistent/sel.npz")], num_epochs=1)
    with pytest.raises(UserError, match=r"data.sources\[0\].*selection file"):
        pipeline.build_iterator(cfg, tokens_per_image=T, rows_per_batch=2, seed=0, process_index=0, process_count=1)
