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


# the keys a source entry may have, by kind (every kind: kind, path, weight, name); what open_source reads
COMMON_SOURCE_KEYS = ("kind", "path", "weight", "name")
SOURCE_KEYS = {
    "webdataset": ("index_dir", "select"),
    "packed_json": (),
    "tfds": ("tfds_name", "split", "data_dir", "image_key", "text_key"),
    "parquet": ("image_column", "text_column", "text_json_path"),
    "llava": ("image_root", "index_dir"),
    "mammoth": ("image_root", "index_dir"),
}


def check_source_specs(specs, field: str) -> list[dict]:
    """The entries of data.sources / data.eval_sources as plain dicts (weight defaulted), checked: a list of entries
    whose kind is known and whose keys are those of that kind (a misspelt key is refused, not ignored)."""
    import difflib

    from oq2vl_jax.errors import UserError

    def example(path: str) -> str:
        return f"e.g. --config.{field}='({{\"kind\": \"webdataset\", \"path\": \"{path}\"}},)'"

    if isinstance(specs, str):  # (the flag parser makes `--config.data.sources=PATH` the tuple (PATH,))
        specs = (specs,)
    if not isinstance(specs, (list, tuple)):
        raise UserError(f"{field} must be a list of {{kind, path, weight}} entries, got {specs!r}")
    out = []
    for i, spec in enumerate(specs):
        where = f"{field}[{i}]"
        if isinstance(spec, ml_collections.ConfigDict):
            spec = spec.to_dict()
        if isinstance(spec, str):
            raise UserError(f"{where} is the string {spec!r}, not a {{kind, path, weight}} entry; {example(spec)}")
        if not isinstance(spec, dict):
            raise UserError(f"{where} must be a {{kind, path, weight}} entry, got {spec!r}")
        spec = dict(spec)
        kind = spec.get("kind")
        if kind not in SOURCE_KEYS:
            raise UserError(f"{where}.kind must be one of {tuple(SOURCE_KEYS)}, got {kind!r}")
        known = COMMON_SOURCE_KEYS + SOURCE_KEYS[kind]
        for key in spec:
            if key not in known:
                close = difflib.get_close_matches(str(key), known, n=1)
                raise UserError(f"{where}: unknown key {key!r} for a {kind} source"
                                + (f'; did you mean "{close[0]}"?' if close else "") + f" (known: {', '.join(known)})")
        weight = spec.setdefault("weight", 1.0)
        if isinstance(weight, bool) or not isinstance(weight, (int, float)) or not weight > 0:
            raise UserError(f"{where}.weight must be a positive number, got {weight!r}")
        out.append(spec)
    return out
