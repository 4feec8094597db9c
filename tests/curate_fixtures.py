"""Tiny DataComp-like shards (img2dataset layout with uid + original size in the json) for the curation tests."""

from __future__ import annotations

import os

from data_fixtures import numbered_samples
from oq2vl_jax.data.sources.webdataset import write_tar_shard

N = 10
PER_SHARD = 5
# (original_width, original_height) per sample: s4 is too thin (min side 5), s6 too elongated (aspect 5)
SIZES = {4: (5, 100), 6: (100, 20)}


def uid_of(i: int) -> str:
    return f"{(i + 1) * 0x1111:016x}{i * 7 + 3:016x}"


def write_datacomp_shards(directory: str) -> str:
    samples = numbered_samples(N)
    for i, s in enumerate(samples):
        w, h = SIZES.get(i, (32, 32))
        s["json"] = {"uid": uid_of(i), "original_width": w, "original_height": h, "caption": s["txt"],
                     "status": "success"}
    for shard in range(N // PER_SHARD):
        write_tar_shard(os.path.join(directory, f"{shard:08d}.tar"),
                             samples[shard * PER_SHARD:(shard + 1) * PER_SHARD])
    return directory
