"""Random-access record sources (Grain `RandomAccessDataSource`s: `len(src)`, `src[i]`).

Every source returns plain dict records; nothing is unpickled and nothing is extracted to disk.

Caption-like sources ("webdataset", "packed_json", "tfds", "parquet") return
    {"source": name, "index": i, "key": str, "documents": [{"key": str, "parts": [("image", bytes) |
     ("text", str), ...]}, ...], "skips": {reason: n}, "repairs": {reason: n}}
where a record may hold several documents (a reference packed JSON file) or none (its problem is in "skips").

Conversation sources ("llava", "mammoth") live in conversations.py (records with "conversations" and "images"; chat
formatting by text/chat.py, chosen by data.chat_format).

    registry.py       the kinds and `open_source(spec)`: one config entry -> a source
    records.py        the caption record above and its skip / repair counters
    webdataset.py     WebDataset tars through a member index (reader) and `write_tar_shard` (writer)
    packed_json.py    the reference's *_packed.json files (+ conversion to WebDataset)
    tfds.py           TFDS array_record datasets (optional dependency)
    parquet.py        Hugging Face parquet datasets
    conversations.py  SFT conversations (LLaVA JSON, MAmmoTH-VL)
    json_index.py     byte-offset index of big JSON / JSON-lines files (never loaded whole)
    npy_map.py        memory-mapped .npy index files
    selection.py      selection files (curation's output) restricting a webdataset source to its rows
    shard_paths.py    which shards a path names (directory, .tar, glob, brace range, list; gs:// / s3://)
    __main__.py       `python -m oq2vl_jax.data.sources index|convert-packed-json|info`
"""

