import base64
import collections
import json
import os

import numpy as np
import pytest

from fixtures.data import (base_config, i16_png_bytes, image_bytes, noise_image_bytes, numbered_samples,
                           png_claiming_size, sample_numbers, tiny_tokenizer, tiny_tokenizer_dir,  # noqa: F401
                           truncated_jpeg_bytes, write_numbered_shards)
from oq2vl_jax.batch import validate_batch
from oq2vl_jax.data import pipeline
from oq2vl_jax.data.sources.webdataset import write_tar_shard
from oq2vl_jax.data.stats import STATS_KEYS, DataStats, sum_stats
from oq2vl_jax.errors import UserError

T = 8
N = 60


@pytest.fixture(scope="module")
def shards(tmp_path_factory):
    return write_numbered_shards(str(tmp_path_factory.mktemp("numbered")), N, shard_size=16)


def run(cfg, rows=2, seed=0, limit=None, **kwargs):
    it = pipeline.build_iterator(cfg, tokens_per_image=T, rows_per_batch=rows, seed=seed, **kwargs)
    batches = []
    for batch in it:
        validate_batch(batch, T, require_loss=True)
        batches.append(batch)
        if limit and len(batches) == limit:
            break
    return batches


def wds(path, weight=1.0):
    return {"kind": "webdataset", "path": path, "weight": weight}


def assert_same_batches(a, b):
    assert len(a) == len(b)
    for x, y in zip(a, b):
        assert x.keys() == y.keys()
        for k in x:
            if k == "stats":
                assert x[k] == y[k]
            else:
                np.testing.assert_array_equal(x[k], y[k], err_msg=k)


def test_default_config():
    cfg = pipeline.default_data_config()
    assert (cfg.image_size, cfg.row_length, cfg.resize_mode, cfg.overlong, cfg.label_mode) == (
        384, 4096, "squash", "truncate", "default")
    assert cfg.num_epochs == -1 and cfg.worker_count == 0 and cfg.shuffle
    assert pipeline.auto_max_images(4096, 144) == 27 and pipeline.auto_max_images(4096, 729) == 5


def test_one_epoch_has_every_document_exactly_once(shards, tiny_tokenizer_dir, tiny_tokenizer):
    batches = run(base_config(tiny_tokenizer_dir, [wds(shards)], num_epochs=1))
    numbers = [n for b in batches for n in sample_numbers(b, tiny_tokenizer)]
    assert sorted(numbers) == list(range(N))
    total = sum_stats(b["stats"] for b in batches)
    assert total["documents"] == N and total["num_images"] == N
    assert total["real_tokens"] == sum(int((b["segment_ids"] > 0).sum()) for b in batches)
    assert total["capacity_tokens"] == len(batches) * 2 * 128
    assert sum(total[k] for k in pipeline.SKIP_REASONS) == 0
    # each image slot holds its own document's image (colours are unique per sample)
    b = batches[0]
    first = sample_numbers(b, tiny_tokenizer)[0]
    colour = ((first * 37) % 256, (first * 91) % 256, (first * 53) % 256)
    assert np.abs(b["images"][0, 0].astype(int) - colour).max() <= 3  # JPEG rounding


def test_epochs_repeat_reshuffled_and_order_is_deterministic(shards, tiny_tokenizer_dir, tiny_tokenizer):
    cfg = base_config(tiny_tokenizer_dir, [wds(shards)], num_epochs=2)
    numbers = [n for b in run(cfg) for n in sample_numbers(b, tiny_tokenizer)]
    assert collections.Counter(numbers) == {i: 2 for i in range(N)}
    assert numbers == [n for b in run(cfg) for n in sample_numbers(b, tiny_tokenizer)]
    other_seed = [n for b in run(cfg, seed=1) for n in sample_numbers(b, tiny_tokenizer)]
    assert other_seed != numbers and sorted(other_seed) == sorted(numbers)


def test_per_host_shards_are_disjoint_and_cover(shards, tiny_tokenizer_dir, tiny_tokenizer):
    cfg = base_config(tiny_tokenizer_dir, [wds(shards)], num_epochs=1)
    per_host = [set(n for b in run(cfg, process_index=i, process_count=3) for n in sample_numbers(b, tiny_tokenizer))
                for i in range(3)]
    assert sum(len(s) for s in per_host) == N
    assert set.union(*per_host) == set(range(N))
    with pytest.raises(UserError, match="process_index"):
        run(cfg, process_index=3, process_count=3)


def test_restore_mid_epoch_reproduces_following_batches(shards, tiny_tokenizer_dir):
    cfg = base_config(tiny_tokenizer_dir, [wds(shards)], num_epochs=2)
    full = run(cfg)
    it = pipeline.build_iterator(cfg, tokens_per_image=T, rows_per_batch=2, seed=0, process_index=0, process_count=1)
    for k in range(len(full)):
        if k in (1, len(full) // 2, len(full) - 1):  # early, across the epoch boundary region, last batch
            state = json.loads(json.dumps(it.get_state()))
            restored = pipeline.build_iterator(cfg, tokens_per_image=T, rows_per_batch=2, seed=0, process_index=0,
                                               process_count=1)
            restored.set_state(state)
            assert_same_batches(list(restored), full[k:])
        next(it)


def test_restore_with_multiprocessing_workers(shards, tiny_tokenizer_dir, tiny_tokenizer):
    cfg = base_config(tiny_tokenizer_dir, [wds(shards)], num_epochs=1, worker_count=2)
    kwargs = dict(tokens_per_image=T, rows_per_batch=2, seed=0, process_index=0, process_count=1)
    it = pipeline.build_iterator(cfg, **kwargs)
    head = [next(it) for _ in range(3)]
    state = json.loads(json.dumps(it.get_state()))
    tail = list(it)
    it.close()
    numbers = [n for b in head + tail for n in sample_numbers(b, tiny_tokenizer)]
    assert sorted(numbers) == list(range(N))  # workers split the records, nothing lost or duplicated
    restored = pipeline.build_iterator(cfg, **kwargs)
    restored.set_state(state)
    assert_same_batches(list(restored), tail)
    restored.close()


def bad_input_shards(root):
    good = numbered_samples(4)
    long_caption = "sample 999 " + "very " * 200
    samples = good + [
        {"__key__": "nocap", "jpg": image_bytes()},
        {"__key__": "noimg", "txt": "sample 998 lonely caption"},
        {"__key__": "garbage", "jpg": b"\x00\x01 not an image", "txt": "sample 997"},
        {"__key__": "trunc", "jpg": truncated_jpeg_bytes(), "txt": "sample 996"},
        {"__key__": "pixel", "png": image_bytes((1, 1), fmt="PNG"), "txt": "sample 995"},
        {"__key__": "bomb", "png": png_claiming_size(20000, 20000), "txt": "sample 994"},
        {"__key__": "blank", "jpg": image_bytes(), "txt": "   \n "},
        {"__key__": "emptytxt", "jpg": image_bytes(), "txt": ""},
        {"__key__": "latin", "jpg": image_bytes(), "txt": "sample 993 caf\xe9".encode("latin-1")},
        {"__key__": "cmyk", "jpg": image_bytes(fmt="JPEG", mode="CMYK"), "txt": "sample 992"},
        {"__key__": "pal", "png": image_bytes(fmt="PNG", mode="P"), "txt": "sample 991"},
        {"__key__": "la", "png": image_bytes(fmt="PNG", mode="LA"), "txt": "sample 990"},
        {"__key__": "i16", "png": i16_png_bytes(np.full((6, 6), 40000)), "txt": "sample 989"},
        {"__key__": "long", "jpg": image_bytes(), "txt": long_caption},
    ]
    write_tar_shard(os.path.join(root, "a.tar"), samples)
    write_tar_shard(os.path.join(root, "b.tar"), numbered_samples(3, start=100))
    data = open(os.path.join(root, "b.tar"), "rb").read()
    open(os.path.join(root, "b.tar"), "wb").write(data[:3000])  # one complete sample survives the cut
    open(os.path.join(root, "c.tar"), "wb").write(b"\x00garbage" * 50)
    return root


@pytest.mark.parametrize("overlong", ["truncate", "drop"])
def test_every_bad_input_kind_is_counted_not_fatal(tmp_path, tiny_tokenizer_dir, overlong):
    root = bad_input_shards(str(tmp_path))
    cfg = base_config(tiny_tokenizer_dir, [wds(root)], num_epochs=1, overlong=overlong, max_image_pixels=10**8)
    batches = run(cfg)
    total = sum_stats(b["stats"] for b in batches)
    expected = {"caption_missing": 1, "image_missing": 1, "image_corrupt": 2, "image_too_small": 1,
                "image_too_large": 1, "caption_empty": 2, "shard_truncated": 1, "shard_unreadable": 1,
                "repaired_text_utf8": 1, "repaired_image_mode": 4,
                "overlong_dropped": int(overlong == "drop"), "truncated_overlong": int(overlong == "truncate")}
    for key, value in expected.items():
        assert total[key] == value, key
    kept = 4 + 1 + 4 + 1 + int(overlong == "truncate")  # good, latin, 4 modes, surviving sample of b.tar, long
    assert total["documents"] == kept
    lengths = [int((b["segment_ids"][r] == s).sum()) for b in batches for r in range(2)
               for s in range(1, int(b["segment_ids"][r].max()) + 1)]
    assert max(lengths) <= 128 and (overlong == "drop" or 128 in lengths)


def test_weighted_mixing(tmp_path, tiny_tokenizer_dir, tiny_tokenizer):
    a = write_numbered_shards(str(tmp_path / "a"), 40, shard_size=20)
    b = write_numbered_shards(str(tmp_path / "b"), 40, shard_size=20, start=1000)
    cfg = base_config(tiny_tokenizer_dir, [wds(a, 3.0), wds(b, 1.0)], num_epochs=1)
    numbers = [n for batch in run(cfg) for n in sample_numbers(batch, tiny_tokenizer)]
    assert len(numbers) == 80  # one "epoch" = sum of source sizes
    from_a = sum(n < 1000 for n in numbers)
    assert from_a == 60  # 3:1 of 80
    assert len(set(n for n in numbers if n >= 1000)) == 20 and len(set(n for n in numbers if n < 1000)) == 40


def test_packed_json_source_in_the_pipeline(tmp_path, tiny_tokenizer_dir, tiny_tokenizer):
    infos = [{"image_info": [{"image_base64": base64.b64encode(image_bytes()).decode()}, None],
              "texts": [None, f"sample {i} from packed json"], "key": str(i), "uid": str(i), "length": 1}
             for i in range(7)]
    os.makedirs(tmp_path / "p")
    json.dump({"data": infos, "lengths": [1] * 7}, open(tmp_path / "p" / "x_packed.json", "w"))
    cfg = base_config(tiny_tokenizer_dir, [{"kind": "packed_json", "path": str(tmp_path / "p"), "weight": 1.0}],
                      num_epochs=1)
    numbers = [n for b in run(cfg) for n in sample_numbers(b, tiny_tokenizer)]
    assert sorted(numbers) == list(range(7))


def test_eval_split_is_one_ordered_pass(shards, tmp_path, tiny_tokenizer_dir, tiny_tokenizer):
    ev = write_numbered_shards(str(tmp_path / "ev"), 12, shard_size=12, start=500)
    cfg = base_config(tiny_tokenizer_dir, [wds(shards)], eval_sources=[wds(ev)], num_epochs=-1)
    first = [n for b in run(cfg, split="eval") for n in sample_numbers(b, tiny_tokenizer)]
    assert sorted(first) == list(range(500, 512))
    assert first == [n for b in run(cfg, split="eval", seed=5) for n in sample_numbers(b, tiny_tokenizer)]
    with pytest.raises(UserError, match="eval_sources is empty"):
        run(base_config(tiny_tokenizer_dir, [wds(shards)]), split="eval")


def test_reference_compat_and_pad_mode_batches_validate(shards, tiny_tokenizer_dir):
    cfg = base_config(tiny_tokenizer_dir, [wds(shards)], label_mode="reference_compat", resize_mode="pad")
    batch = run(cfg, limit=1)[0]
    real = batch["segment_ids"] > 0
    assert set(np.unique(batch["segment_ids"][real])) == {1}
    assert batch["loss_weights"].sum() > 0


def test_config_errors_name_the_field(shards, tiny_tokenizer_dir):
    good = [wds(shards)]
    cases = [({"label_mode": "x"}, "data.label_mode"), ({"num_epochs": 0}, "data.num_epochs"),
             ({"row_length": "4096"}, "data.row_length"), ({"resize_mode": "crop"}, "data.resize_mode"),
             ({"sources": [wds(shards, 0.0)]}, r"data.sources\[0\].weight"),
             ({"sources": [wds("/nonexistent/x")]}, r"data.sources\[0\].path"),
             ({"sources": []}, "data.sources is empty"), ({"tokenizer_dir": "/nonexistent"}, "data.tokenizer_dir")]
    for override, message in cases:
        cfg = base_config(tiny_tokenizer_dir, good).to_dict()
        cfg.update(override)
        with pytest.raises(UserError, match=message):
            run(cfg, process_index=0, process_count=1)
    with pytest.raises(UserError, match="unknown field"):
        run({"sources": good, "tokenizer_dir": tiny_tokenizer_dir, "rowlength": 5})
    with pytest.raises(UserError, match="tokens_per_image"):
        pipeline.build_iterator(base_config(tiny_tokenizer_dir, good), tokens_per_image=200, rows_per_batch=1, seed=0)


def test_data_stats_summary(shards, tiny_tokenizer_dir):
    stats = DataStats()
    for batch in run(base_config(tiny_tokenizer_dir, [wds(shards)], num_epochs=1)):
        assert set(batch["stats"]) == set(STATS_KEYS)
        stats.update(batch["stats"])
    assert stats.totals["documents"] == N and 0 < stats.fill <= 1
    assert "60 documents" in stats.log_summary()
    assert pipeline.model_vocab_size({"tokenizer_dir": tiny_tokenizer_dir}) == 677
