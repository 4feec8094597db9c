"""Copy the selected samples into new shards, for users who want them (training reads selections directly).

Output as the original's resharder (DataComp `resharder.py`): tars `{:08d}.tar` of at most 10000 samples, every
member of a selected sample copied unchanged (image, caption, json, ...), key `"{uid}-{j}"` for its j-th copy (a
sample listed k times in the selection is written k times), in input shard order. No shuffling, no face blurring.
"""

from __future__ import annotations

import collections
import os
import time

from absl import logging

from oq2vl_jax.curate import shards as shards_lib
from oq2vl_jax.data.sources.selection import check_fresh, read_selection
from oq2vl_jax.data.sources.webdataset import write_tar_shard
from oq2vl_jax.errors import UserError

SHARD_SIZE = 10000
SHARD_NAME = "{:08d}.tar"


def reshard(selection_path: str, out_dir: str, shard_size: int = SHARD_SIZE) -> dict:
    meta, shard_ids, offsets = read_selection(selection_path)
    root = meta["root"]
    check_fresh(meta, root, selection_path)
    if os.path.exists(out_dir) and os.listdir(out_dir):
        raise UserError(f"output '{out_dir}' exists and is not empty; choose a new directory")
    os.makedirs(out_dir, exist_ok=True)
    wanted = collections.defaultdict(collections.Counter)
    for s, o in zip(shard_ids.tolist(), offsets.tolist()):
        wanted[s][o] += 1
    start, buffer, written, out_index = time.time(), [], 0, 0
    for s, (name, _, _) in enumerate(meta["shards"]):
        if s not in wanted:
            continue
        for sample in shards_lib.iter_samples(os.path.join(root, name), want_image=False):
            for j in range(wanted[s].get(sample["image_offset"], 0)):
                out = {"__key__": f"{sample['uid']}-{j}"}
                out.update({ext: data for ext, (_, data) in sample["members"].items()})
                buffer.append(out)
                if len(buffer) == shard_size:
                    write_tar_shard(os.path.join(out_dir, SHARD_NAME.format(out_index)), buffer)
                    written, out_index, buffer = written + len(buffer), out_index + 1, []
                    rate = written / max(time.time() - start, 1e-9)
                    logging.info("curate reshard: %d samples in %d shards (%.0f samples/s, ETA %.0f s)", written,
                                 out_index, rate, (len(shard_ids) - written) / rate)
    if buffer:
        write_tar_shard(os.path.join(out_dir, SHARD_NAME.format(out_index)), buffer)
        written, out_index = written + len(buffer), out_index + 1
    if written != len(shard_ids):
        raise UserError(f"reshard: wrote {written} samples but the selection lists {len(shard_ids)}; the shards "
                        "changed under it")
    return {"samples": written, "shards": out_index}
