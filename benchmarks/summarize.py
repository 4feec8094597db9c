"""Prints the markdown table of a GPU job's step results (ours_*.json, peer_*.json in a folder; other JSON files are
skipped), with the ratio of our tokens/s to the best PyTorch peer's.

  python benchmarks/summarize.py gpu_results/
"""

from __future__ import annotations

import glob
import json
import os
import sys


def rows(folder: str) -> list[dict]:
    out = []
    for path in sorted(glob.glob(os.path.join(folder, "*.json"))):
        with open(path) as f:
            r = json.load(f)
        if "step_ms" not in r:  # another stage's result (decode.json)
            continue
        r["name"] = os.path.basename(path)[:-5]
        out.append(r)
    return out


def table(results: list[dict]) -> str:
    peers = [r for r in results if r.get("impl") == "torch-peer"]
    best_peer = max((r["tokens_per_s"] for r in peers), default=None)
    lines = ["| run | device | rows | step ms | tokens/s | images/s | MFU (datasheet) | MFU (matmul ceiling) | "
             "peak GiB | vs best peer |", "|" + " --- |" * 10]
    for r in results:
        ratio = f"{r['tokens_per_s'] / best_peer:.2f}x" if best_peer else "-"
        fmt = lambda v, spec: format(v, spec) if isinstance(v, (int, float)) else "-"  # noqa: E731
        lines.append(f"| {r['name']} | {r.get('device', '-')} | {r.get('rows')} | {fmt(r['step_ms'], '.1f')} | "
                     f"{fmt(r['tokens_per_s'], ',.0f')} | {fmt(r['images_per_s'], '.1f')} | "
                     f"{fmt(r.get('mfu'), '.1%')} | {fmt(r.get('mfu_vs_ceiling'), '.1%')} | "
                     f"{fmt(r.get('peak_mem_gib'), '.1f')} | {ratio} |")
    return "\n".join(lines)


if __name__ == "__main__":
    print(table(rows(sys.argv[1] if len(sys.argv) > 1 else "gpu_results")))
