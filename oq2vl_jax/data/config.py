"""The data config schema and its defaults: what `configs/*.py` import (not the pipeline itself).

Every field a user may set on the command line has a type ml_collections can override: the source lists are tuples,
so `--config.data.sources='({"kind": "webdataset", "path": "/data/shards"},)'` works with every config.
"""

from __future__ import annotations

import ml_collections

# Sane ceiling for decoded pixels (~8k x 8k; 192 MiB as RGB); PIL's own default warns at 89M and fails at 179M.
MAX_IMAGE_PIXELS = 64 * 1024 * 1024


def default_data_config() -> ml_collections.ConfigDict:
    return ml_collections.ConfigDict({
        # each: {kind: webdataset|packed_json|tfds|llava|mammoth, path, weight, + kind extras: index_dir (webdataset),
        # tfds_name / split / data_dir / image_key / text_key (tfds), image_root + index_dir (llava, mammoth)}.
        # A webdataset path may be a directory, one .tar, a glob (train-*.tar), a brace range ({00000..01023}.tar)
        # or a list of these (see data/sources/shard_paths.py).
        "sources": (),
        "eval_sources": (),
        "tokenizer_dir": "",
        "image_size": 384,
        "resize_mode": "squash",        # "squash" (the reference) | "pad" (keep aspect ratio, grey borders)
        "row_length": 4096,
        "max_images_per_row": 0,        # 0 = as many as can fit: row_length // (tokens_per_image + 3)
        "packing": "ffd_fill",          # "ffd_fill" (FFD + exact tail fill, >= 99% fill) | "ffd" (plain, as the reference)
                                        # | "none" (one document per row: the reference's SFT batches)
        "pack_buffer": 2048,            # documents per packing round (memory: encoded bytes of that many images)
        "overlong": "truncate",         # documents longer than row_length: "truncate" (text only) | "drop"
        "label_mode": "default",        # "default" | "reference_compat"
        "num_epochs": -1,               # -1 = forever
        "worker_count": 0,              # 0 = in-process; > 0 = grain mp_prefetch worker processes
        "worker_buffer_size": 2,        # batches buffered per worker
        "read_threads": 4,              # threads reading + tokenizing records before packing
        "shuffle": True,
        "shuffle_rows": True,           # emit each FFD round's rows in a seeded random order
        "max_image_pixels": MAX_IMAGE_PIXELS,
        "jpeg_draft": False,            # opt-in faster JPEG decode of large images; NOT bit-exact with the reference
        "chat_format": "open_qwen2vl",  # SFT (llava / mammoth): "open_qwen2vl" | "qwen2" | "qwen2.5" (text/chat.py)
        "missing_image": "text_only",   # SFT sample with an unusable image: "text_only" (keep the text) | "skip"
    })
