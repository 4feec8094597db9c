"""WebDataset source throughput: shards on local disk vs the same shards in an S3 bucket (a script, not a test).

    python benchmarks/bench_buckets.py [--records 1500] [--image-kb 64] [--threads 1,8] [--repeats 3] [--json out.json]

Writes WebDataset shards of random "images" (the source does not decode them; ~64 KiB is a 512 px web JPEG) and
captions, uploads them to a local S3-compatible server (moto's server, started here as its own process on
127.0.0.1), and reads every record in a random order through `WebDatasetSource` from both places: one thread, and a
pool of threads as Grain's read threads do. Reported per place: records/s and MiB/s (median of the repeats), the
ratio local / bucket, and where a bucket read's time goes: the client's CPU per GET (request signing, HTTP, response
parsing: this process's CPU time over the reads), the server's CPU per GET (the moto process), and the latency of a
1-byte ranged GET (the per-request floor, independent of size). Indexing time is reported for both too.
"""

from __future__ import annotations

import argparse
import json
import os
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import psutil

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from oq2vl_jax.data.sources.webdataset import WebDatasetSource, write_tar_shard  # noqa: E402
from oq2vl_jax.storage import local_copy, paths  # noqa: E402


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def start_server() -> tuple[subprocess.Popen, str]:
    port = free_port()
    proc = subprocess.Popen([sys.executable, "-m", "moto.server", "-H", "127.0.0.1", "-p", str(port)],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.time() + 60
    while time.time() < deadline:
        try:
            socket.create_connection(("127.0.0.1", port), timeout=1).close()
            return proc, f"http://127.0.0.1:{port}"
        except OSError:
            time.sleep(0.2)
    proc.kill()
    raise SystemExit("moto server did not start")


def write_shards(directory: str, records: int, per_shard: int, image_kb: int) -> None:
    rng = np.random.default_rng(0)
    for s in range(0, records, per_shard):
        samples = [{"__key__": f"{i:08d}", "jpg": rng.bytes(image_kb * 1024 + int(rng.integers(-4096, 4096))),
                    "txt": f"sample {i}: a photo of a red bicycle leaning on a wall",
                    "json": {"key": f"{i:08d}"}} for i in range(s, min(s + per_shard, records))]
        write_tar_shard(os.path.join(directory, f"{s // per_shard:05d}.tar"), samples)


def read_all(source, order, threads: int) -> tuple[float, float, int]:
    """(seconds, this process's CPU seconds, bytes) to read every record in `order`."""
    def one(i):
        parts = source[int(i)]["documents"][0]["parts"]
        return len(parts[0][1]) + len(parts[1][1])
    cpu, t = time.process_time(), time.perf_counter()
    if threads == 1:
        total = sum(one(i) for i in order)
    else:
        with ThreadPoolExecutor(threads) as pool:
            total = sum(pool.map(one, order, chunksize=16))
    return time.perf_counter() - t, time.process_time() - cpu, total


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--records", type=int, default=1500)
    ap.add_argument("--per-shard", type=int, default=250)
    ap.add_argument("--image-kb", type=int, default=64)
    ap.add_argument("--threads", default="1,8")
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--json", default="")
    args = ap.parse_args()
    threads = [int(t) for t in args.threads.split(",")]

    tmp = tempfile.mkdtemp(prefix="bench_buckets_")
    os.environ["OQ2VL_CACHE"] = os.path.join(tmp, "cache")
    server, endpoint = start_server()
    os.environ.update({"AWS_ENDPOINT_URL": endpoint, "AWS_ACCESS_KEY_ID": "bench", "AWS_SECRET_ACCESS_KEY": "bench",
                       "AWS_DEFAULT_REGION": "us-east-1"})
    server_ps = psutil.Process(server.pid)
    results: dict = {"records": args.records, "image_kb": args.image_kb, "repeats": args.repeats, "runs": {}}
    try:
        local_dir = os.path.join(tmp, "shards")
        write_shards(local_dir, args.records, args.per_shard, args.image_kb)
        fs = paths.filesystem("s3://bench")
        fs.mkdir("s3://bench")
        local_copy.upload_dir(local_dir, "s3://bench/shards")
        places = {"local": local_dir, "s3": "s3://bench/shards"}
        sources = {}
        for place, path in places.items():
            t = time.perf_counter()
            sources[place] = WebDatasetSource(path, index_dir=os.path.join(tmp, f"index_{place}"))
            results[f"index_seconds_{place}"] = time.perf_counter() - t
        order = np.random.default_rng(1).permutation(args.records)
        for n in threads:
            for place, source in sources.items():
                runs = []
                for _ in range(args.repeats):
                    server_cpu = sum(server_ps.cpu_times()[:2])
                    seconds, cpu, nbytes = read_all(source, order, n)
                    runs.append({"seconds": seconds, "client_cpu": cpu, "bytes": nbytes,
                                 "server_cpu": sum(server_ps.cpu_times()[:2]) - server_cpu})
                results["runs"][f"{place}_t{n}"] = runs
        # the per-request floor: 1-byte ranged GETs of one object, one thread
        shard = paths.find("s3://bench/shards", ".tar")[0]
        _, version = paths.stat(shard)
        t = time.perf_counter()
        for i in range(200):
            paths.read_range(shard, i, 1, version)
        results["one_byte_get_ms"] = (time.perf_counter() - t) / 200 * 1e3
    finally:
        server.kill()
        server.wait()

    print(f"{args.records} records of ~{args.image_kb} KiB + caption, random order, median of {args.repeats}; "
          f"index: local {results['index_seconds_local']:.2f} s, s3 {results['index_seconds_s3']:.2f} s")
    for n in threads:
        row = {}
        for place in ("local", "s3"):
            runs = results["runs"][f"{place}_t{n}"]
            sec = statistics.median(r["seconds"] for r in runs)
            row[place] = args.records / sec
            mib = statistics.median(r["bytes"] for r in runs) / sec / 2**20
            per_get_client = statistics.median(r["client_cpu"] for r in runs) / args.records * 1e3
            per_get_server = statistics.median(r["server_cpu"] for r in runs) / args.records * 1e3
            print(f"  {n} thread(s) {place:5s}: {row[place]:9.1f} records/s {mib:8.1f} MiB/s | per record: "
                  f"{sec / args.records * 1e3:.3f} ms wall, client CPU {per_get_client:.3f} ms"
                  + (f", server CPU {per_get_server:.3f} ms" if place == "s3" else "")
                  + "  (runs: " + ", ".join(f"{args.records / r['seconds']:.0f}" for r in runs) + ")")
        print(f"  {n} thread(s): local / s3 = {row['local'] / row['s3']:.1f}x")
        results[f"ratio_t{n}"] = row["local"] / row["s3"]
    print(f"  1-byte ranged GET: {results['one_byte_get_ms']:.2f} ms (the per-request floor)")
    if args.json:
        with open(args.json, "w") as f:
            json.dump(results, f, indent=2)


if __name__ == "__main__":
    main()
