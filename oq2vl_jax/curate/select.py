"""Selection rules over per-shard score tables -> a selection file (data/sources/selection.py) a webdataset source
reads.

The rows a rule ranges over are the samples of the shards, as listed by our per-shard tables
(`{shard}_{task}.parquet`, written by `curate score` / `curate keys`; columns key, uid, image_offset, width, height,
status [, score]), in shard order then tar order. A rule is JSON:

  {"and": [rule, ...]}  {"or": [rule, ...]}  ("union" is "or")
  {"table": TASK, "min": x}                 column `score` of our `{shard}_{TASK}.parquet` >= x
  {"table": TASK, "top_fraction": f}        the top fraction f of that score, ties at the threshold kept at random
  {"mlm": DIR, "task": T, "min": x}          the original's MLM-Filter parquets DIR/{8 digits}_{T}.parquet
  {"mlm": DIR, "task": T, "top_fraction": f} (uid, {T}_score text, status): score text parsed as the original does
  {"uids": FILE.npy}                        DataComp subset: sorted (uid_hi, uid_lo) "u8,u8" pairs
  {"basic": {"min_side": 10, "max_aspect": 4}}  image size (json original_width/height, else the image header)
                                            and status "success": the original's `basic_filter`

Top fraction, as the original's `get_threshold_and_sampling_prob` + `above_threshold_decision`
(`data_filtering/baselines/apply_filter.py`): over the rows whose score parses, n = int(len * f), threshold = the
n-th largest score (0-based), rows above it are kept, rows equal to it are kept when `random.random() < p` with
p = (n - #above) / #equal, from one `random.Random(42)` stream drawn row by row in shard order. (The original seeds
the global `random` with 42 and draws from worker threads, so its tie picks depend on thread timing; ours are
reproducible.) A fraction selects at least the rows above the threshold, so it can keep a few more or fewer than
f * len when ties are drawn.
"""

from __future__ import annotations

import glob
import os
import random
import re
import time
from typing import Any

import numpy as np
from absl import logging

from oq2vl_jax.curate import mlm_filter, shards as shards_lib
from oq2vl_jax.data.sources.selection import shard_fingerprint, write_selection
from oq2vl_jax.errors import UserError

TIE_SEED = 42  # the original: random.seed(42) at import of apply_filter.py


class Rows:
    """All samples of the shards: per-row shard id, image offset, size and status; keys and uids stay Arrow arrays
    (uids are parsed to (hi, lo) pairs only when a rule needs them)."""

    def __init__(self, root: str, shards: list[str], tables_dir: str, task: str):
        import pyarrow.compute as pc
        self.root, self.shards, self.tables_dir, self.task = root, shards, tables_dir, task
        self.fingerprints, self._keys, self._uids = [], [], []
        parts = {c: [] for c in ("shard", "image_offset", "width", "height", "success")}
        for i, shard in enumerate(shards):
            path = shards_lib.table_path(tables_dir, shard, task)
            if not os.path.isfile(path):
                raise UserError(f"no table for shard '{shard}': {path} is missing (run `curate score` or "
                                f"`curate keys` on these shards first)")
            fingerprint = shard_fingerprint(root, shard)
            if shards_lib.table_fingerprint(path) != fingerprint:
                raise UserError(f"table {path} is stale: shard '{shard}' changed since it was written; recompute it")
            self.fingerprints.append(fingerprint)
            t = shards_lib.read_table(path, ["key", "uid", "image_offset", "width", "height", "status"])
            parts["shard"].append(np.full(t.num_rows, i, np.int32))
            for c in ("image_offset", "width", "height"):
                parts[c].append(t.column(c).to_numpy().astype(np.int64))
            parts["success"].append(pc.equal(t.column("status"), "success").to_numpy(zero_copy_only=False))
            self._keys.append(t.column("key"))
            self._uids.append(t.column("uid"))
        for c, chunks in parts.items():
            setattr(self, c, np.concatenate(chunks) if chunks else np.zeros(0, np.int64))
        self.success = self.success.astype(bool)
        self._uid_pairs = None

    def __len__(self) -> int:
        return len(self.shard)

    @property
    def uid_pairs(self) -> np.ndarray:
        if self._uid_pairs is None:
            self._uid_pairs = np.concatenate([uid_pairs(u) for u in self._uids]) if self._uids else \
                np.zeros(0, "u8,u8")
        return self._uid_pairs

    def table_column(self, task: str, column: str = "score") -> np.ndarray:
        out = []
        for shard, keys in zip(self.shards, self._keys):
            path = shards_lib.table_path(self.tables_dir, shard, task)
            if not os.path.isfile(path):
                raise UserError(f"rule table {task!r}: {path} is missing")
            if shards_lib.table_fingerprint(path) != shard_fingerprint(self.root, shard):
                raise UserError(f"table {path} is stale: shard '{shard}' changed since it was written")
            t = shards_lib.read_table(path, ["key", column])
            if not t.column("key").equals(keys):
                raise UserError(f"table {path} lists other samples than the {self.task!r} table of the same shard")
            out.append(t.column(column).to_numpy().astype(np.float64))
        return np.concatenate(out) if out else np.zeros(0)


_HEX = np.full(256, 255, np.uint8)
_HEX[np.frombuffer(b"0123456789", np.uint8)] = np.arange(10)
_HEX[np.frombuffer(b"abcdef", np.uint8)] = np.arange(10, 16)
_HEX[np.frombuffer(b"ABCDEF", np.uint8)] = np.arange(10, 16)
_NIBBLE_WEIGHTS = (np.uint64(16) ** np.arange(15, -1, -1, dtype=np.uint64)).astype(np.uint64)


def uid_pairs(uids) -> np.ndarray:
    """128-bit hex uids -> structured (hi, lo) "u8,u8", the original's `divmod(int(uid, 16), 2**64)`; uids that
    are not hex (our key fallback) map to (0, 0), which no DataComp subset lists. 32-digit uids (DataComp's) are
    parsed vectorised; others one by one."""
    uids = uids.to_pylist() if hasattr(uids, "to_pylist") else list(uids)
    out = np.zeros(len(uids), "u8,u8")
    fixed = np.array([isinstance(u, str) and len(u) == 32 and u.isascii() for u in uids], bool)
    if fixed.any():
        raw = np.frombuffer("".join(u for u, f in zip(uids, fixed) if f).encode("ascii"), np.uint8)
        digits = _HEX[raw].reshape(-1, 32)
        ok = (digits != 255).all(axis=1)
        d = digits.astype(np.uint64)
        hi, lo = (d[:, :16] * _NIBBLE_WEIGHTS).sum(axis=1, dtype=np.uint64), \
            (d[:, 16:] * _NIBBLE_WEIGHTS).sum(axis=1, dtype=np.uint64)
        where = np.nonzero(fixed)[0]
        out["f0"][where[ok]], out["f1"][where[ok]] = hi[ok], lo[ok]
        fixed[where[~ok]] = False  # not hex: tried one by one below (and rejected there)
    for i in np.nonzero(~fixed)[0]:
        try:
            out[i] = divmod(int(uids[i], 16), 2 ** 64)
        except (TypeError, ValueError, OverflowError):
            pass
    return out


def fraction_threshold(values: np.ndarray, fraction: float) -> tuple[float, float]:
    """(threshold, tie keep probability) of the original's top-fraction rule over parsed scores `values`."""
    if not 0 < fraction <= 1:
        raise UserError(f"top_fraction must be in (0, 1], got {fraction}")
    if len(values) == 0:
        raise UserError("top_fraction over zero parsed scores")
    n = int(len(values) * fraction)
    ordered = np.sort(values)[::-1]
    threshold = ordered[min(n, len(ordered) - 1)]  # the original indexes [n] (IndexError at f = 1)
    above = int((values > threshold).sum())
    equal = int((values == threshold).sum())
    return float(threshold), (n - above) / equal


def keep_top(values: np.ndarray, parsed: np.ndarray, threshold: float, prob: float, rng: random.Random) -> np.ndarray:
    """Row by row: above -> kept, equal -> kept if rng.random() < prob (one draw per tie row), else dropped."""
    keep = parsed & (values > threshold)
    for i in np.nonzero(parsed & (values == threshold))[0]:
        keep[i] = rng.random() < prob
    return keep


def _mlm_mask(rows: Rows, rule: dict) -> np.ndarray:
    task = rule.get("task")
    if task not in mlm_filter.TASKS:
        raise UserError(f"mlm rule: task must be one of {list(mlm_filter.TASKS)}, got {task!r}")
    paths = sorted(p for p in glob.glob(os.path.join(rule["mlm"], "**", "*.parquet"), recursive=True)
                   if re.fullmatch(rf"\d{{8}}_{task}\.parquet", os.path.basename(p)))
    if not paths:
        raise UserError(f"mlm rule: no {{8 digits}}_{task}.parquet files in {rule['mlm']}")
    column = f"{task}_score"
    uids, texts, success = [], [], []
    for p in paths:
        t = shards_lib.read_table(p)
        if column not in t.column_names or "uid" not in t.column_names:
            raise UserError(f"{p} has no 'uid' / '{column}' column")
        uids += t.column("uid").to_pylist()
        texts += t.column(column).to_pylist()
        status = t.column("status").to_pylist() if "status" in t.column_names else ["success"] * t.num_rows
        success += [s == "success" for s in status]
    scores, parsed = mlm_filter.parse_scores(texts)
    success = np.asarray(success, bool)
    if "top_fraction" in rule:
        # population: rows whose WHOLE text is an integer (the original's `interger_decision`, no first-line cut)
        whole = np.array([mlm_filter.whole_text_is_int(t) for t in texts], bool)
        threshold, prob = fraction_threshold(scores[whole & parsed], float(rule["top_fraction"]))
        logging.info("curate select: %s top %.4f -> threshold %s, tie keep probability %.4f", task,
                     rule["top_fraction"], threshold, prob)
        keep = keep_top(scores, parsed, threshold, prob, random.Random(TIE_SEED))
    else:
        keep = parsed & (scores >= float(rule["min"]))
    keep &= success
    return _member(rows.uid_pairs, uid_pairs(np.asarray(uids, object))[keep])


def _member(needles: np.ndarray, haystack: np.ndarray) -> np.ndarray:
    """needles[i] in haystack, for structured u8,u8 uids (sorted search as the original's resharder)."""
    hay = np.sort(haystack)
    at = np.searchsorted(hay, needles)
    return (at < len(hay)) & (hay[np.minimum(at, len(hay) - 1)] == needles) if len(hay) else \
        np.zeros(len(needles), bool)


def mask_for(rule: Any, rows: Rows) -> np.ndarray:
    if not isinstance(rule, dict) or len(rule) == 0:
        raise UserError(f"a rule must be a JSON object, got {rule!r}")
    for op in ("and", "or", "union"):
        if op in rule:
            parts = [mask_for(r, rows) for r in rule[op]]
            if not parts:
                raise UserError(f"rule '{op}' needs at least one part")
            return np.logical_and.reduce(parts) if op == "and" else np.logical_or.reduce(parts)
    if "table" in rule:
        values = rows.table_column(rule["table"], rule.get("column", "score"))
        parsed = ~np.isnan(values)
        if "top_fraction" in rule:
            threshold, prob = fraction_threshold(values[parsed], float(rule["top_fraction"]))
            logging.info("curate select: %s top %.4f -> threshold %s, tie probability %.4f", rule["table"],
                         rule["top_fraction"], threshold, prob)
            return keep_top(np.nan_to_num(values), parsed, threshold, prob, random.Random(TIE_SEED))
        if "min" not in rule:
            raise UserError(f"table rule {rule} needs 'min' or 'top_fraction'")
        return parsed & (values >= float(rule["min"]))
    if "mlm" in rule:
        if "min" not in rule and "top_fraction" not in rule:
            raise UserError(f"mlm rule {rule} needs 'min' or 'top_fraction'")
        return _mlm_mask(rows, rule)
    if "uids" in rule:
        try:
            subset = np.load(rule["uids"], allow_pickle=False)
        except (OSError, ValueError) as e:
            raise UserError(f"uids rule: cannot read {rule['uids']}: {e}") from None
        if subset.dtype != np.dtype("u8,u8"):
            raise UserError(f"uids rule: {rule['uids']} holds {subset.dtype}, expected the DataComp 'u8,u8' uid pairs")
        return _member(rows.uid_pairs, subset)
    if "basic" in rule:
        b = rule["basic"]
        w, h = rows.width.astype(np.float64), rows.height.astype(np.float64)
        small, large = np.minimum(w, h), np.maximum(w, h)
        with np.errstate(divide="ignore", invalid="ignore"):
            aspect = np.where(small > 0, large / np.where(small > 0, small, 1), np.inf)
        keep = rows.success.copy()
        keep &= small >= float(b.get("min_side", 10))
        keep &= aspect <= float(b.get("max_aspect", 4))
        return keep
    raise UserError(f"unknown rule {rule}; use and / or / union / table / mlm / uids / basic")


def select(shards_pattern: str, tables_dir: str, rule: dict, out: str, task: str = "keys") -> dict:
    """Evaluates `rule` over the shards' rows and writes the selection; returns the counts."""
    start = time.time()
    root, shards = shards_lib.list_shards(shards_pattern)
    rows = Rows(root, shards, tables_dir, task)
    keep = mask_for(rule, rows) & (rows.image_offset >= 0)
    touched = np.unique(rows.shard[keep])
    remap = np.full(len(shards), -1, np.int32)
    remap[touched] = np.arange(len(touched), dtype=np.int32)
    counts = {"rows": int(len(rows)), "selected": int(keep.sum()), "shards": int(len(touched))}
    write_selection(out, root=root, shards=[rows.fingerprints[i] for i in touched], shard=remap[rows.shard[keep]],
                    image_offset=rows.image_offset[keep], rule=rule, counts=counts)
    logging.info("curate select: kept %d of %d samples (%.2f%%) from %d shards in %.1f s -> %s", counts["selected"],
                 counts["rows"], 100 * counts["selected"] / max(1, counts["rows"]), counts["shards"],
                 time.time() - start, out)
    return counts
