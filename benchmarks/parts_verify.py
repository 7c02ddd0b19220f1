"""Exactly-once verification and resume scan of a part store vs N (issue 17), old vs new.

A simulated store (parts of `--chunk` ids holding only `sample_id`, written with the store's own
writer) at N = 10^5 ... 10^8 ids. Arms, each run in a fresh subprocess so that its driver peak
memory is its own (peak RSS growth over the process's RSS before the call):
  old     the removed `verify_exactly_once`: an N-long count array plus one N-long
          `np.bincount(minlength=N)` per record batch -- O(N x parts) time, O(N) memory
  footer  `PartStore.verify` (new default): one listing + each part's footer (row count,
          min/max id statistics), then the set of chunks -- O(parts) time, O(parts) tiny memory
  ids     `PartStore.verify(check="ids")`: reads every part's id column, one part at a time
  list    the listing alone (`PartStore.list_chunks`), the floor of any resume scan
A resume scan is the same pass as `footer` (`PartStore.scan`), so its time is the footer time.
With `--s3` the footer arm is also run against a local S3 server (moto, test dependency) for the
smaller N. The old arm is skipped above `--old-max` (it is quadratic: minutes at 10^7).

Decision rule, written before the run: the new check scales if footer time per part is flat
(within 2x) from the smallest to the largest N, its peak memory growth stays under 64 MB at every
N, and 10^8 ids (10^5 parts of 1,000) verify in under 60 s on this machine.

    .venv/bin/python benchmarks/parts_verify.py [--quick] [--max-n 100000000] [--s3]

writes benchmarks/results/parts_verify.json and prints a table.
"""

from __future__ import annotations

import argparse
import json
import math
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import psutil

RESULTS = Path(__file__).parent / "results"
ARM_TIMEOUT_S = 600


def old_verify(out_dir: str, n_samples: int) -> None:
    """The check this issue replaces, as it was in raygen/distributed/sampling.py."""
    import pyarrow.dataset as pads

    counts = np.zeros(n_samples, dtype=np.int64)
    for batch in pads.dataset(out_dir, format="parquet").to_batches(columns=["sample_id"]):
        counts += np.bincount(batch.column(0).to_numpy(), minlength=n_samples)[:n_samples]
    missing, repeated = int((counts == 0).sum()), int((counts > 1).sum())
    if missing or repeated:
        raise RuntimeError(f"output {out_dir} is incomplete: {missing} ids missing, {repeated} ids written twice")


def arm(name: str, uri: str, n: int, chunk: int) -> dict:
    """Run one arm in this process; returns seconds and peak RSS growth (MB) during the call."""
    import threading

    # imported before measuring: a driver has them loaded already
    import pyarrow.dataset  # noqa: F401
    import pyarrow.parquet  # noqa: F401

    from raygen.parts import Chunks, PartStore

    store, layout = PartStore.at(uri), Chunks(n, chunk)
    proc = psutil.Process()
    base = peak = proc.memory_info().rss
    stop = threading.Event()

    def watch():
        nonlocal peak
        while not stop.is_set():
            peak = max(peak, proc.memory_info().rss)
            time.sleep(0.005)

    watcher = threading.Thread(target=watch, daemon=True)
    watcher.start()
    start = time.perf_counter()
    if name == "old":
        old_verify(store.loc.path, n)
    elif name == "list":
        chunks, _ = store.list_chunks()
        assert len(chunks) == layout.count
    else:
        store.verify(layout, check="ids" if name == "ids" else "footer")
    seconds = time.perf_counter() - start
    stop.set()
    watcher.join()
    peak = max(peak, proc.memory_info().rss)
    return {"seconds": seconds, "peak_mb": (peak - base) / 2**20}


def run_arm(name: str, uri: str, n: int, chunk: int) -> dict:
    cmd = [sys.executable, __file__, "--arm", name, "--uri", uri, "--n", str(n), "--chunk", str(chunk)]
    try:
        out = subprocess.run(cmd, capture_output=True, text=True, timeout=ARM_TIMEOUT_S, check=True)
    except subprocess.TimeoutExpired:
        return {"seconds": None, "peak_mb": None, "note": f"> {ARM_TIMEOUT_S} s"}
    return json.loads(out.stdout.strip().splitlines()[-1])


def write_store(uri: str, n: int, chunk: int) -> float:
    import pyarrow as pa

    from raygen.parts import Chunks, PartStore

    store, layout = PartStore.at(uri), Chunks(n, chunk)
    start = time.perf_counter()
    for c in range(layout.count):
        store.write(c, pa.table({"sample_id": layout.ids(c)}), layout, {"shape": [1]})
    return time.perf_counter() - start


def s3_server():
    """moto's S3 on 127.0.0.1 with dummy credentials (inherited by the arm subprocesses)."""
    import os

    for key, value in (("AWS_ACCESS_KEY_ID", "testing"), ("AWS_SECRET_ACCESS_KEY", "testing"),
                       ("AWS_DEFAULT_REGION", "us-east-1")):
        os.environ.setdefault(key, value)
    import logging
    import socket

    from moto.server import ThreadedMotoServer

    logging.getLogger("werkzeug").setLevel(logging.ERROR)
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=port, verbose=False)
    server.start()
    return server, f"127.0.0.1:{port}"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="N up to 10^6 only")
    parser.add_argument("--max-n", type=int, default=10**8)
    parser.add_argument("--old-max", type=int, default=4 * 10**6, help="largest N for the quadratic old arm")
    parser.add_argument("--s3", action="store_true", help="also the footer check on a local S3 server (N <= 10^6)")
    parser.add_argument("--chunk", type=int, default=1000)
    parser.add_argument("--arm", help=argparse.SUPPRESS)
    parser.add_argument("--uri", help=argparse.SUPPRESS)
    parser.add_argument("--n", type=int, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.arm:  # a subprocess measuring one arm
        print(json.dumps(arm(args.arm, args.uri, args.n, args.chunk)))
        return

    max_n = 10**6 if args.quick else args.max_n
    sizes = [n for n in (10**5, 10**6, 10**7, 10**8) if n <= max_n]
    tmp = Path(tempfile.mkdtemp(prefix="raygen-parts-bench-"))
    rows = []
    server = None
    try:
        if args.s3:
            import pyarrow.fs as pafs

            server, endpoint = s3_server()
            pafs.S3FileSystem(endpoint_override=endpoint, scheme="http", allow_bucket_creation=True).create_dir("bench")
        for n in sizes:
            uri = str(tmp / f"n{n}")
            written = write_store(uri, n, args.chunk)
            row = {"n": n, "parts": math.ceil(n / args.chunk), "storage": "local", "write_seconds": written}
            for name in ("list", "footer", "ids", "old"):
                if name == "old" and n > args.old_max:
                    row[name] = {"seconds": None, "peak_mb": None, "note": f"skipped (N > {args.old_max})"}
                    continue
                row[name] = run_arm(name, uri, n, args.chunk)
            rows.append(row)
            print(f"N={n}: " + ", ".join(f"{k} {row[k]['seconds']}" for k in ("list", "footer", "ids", "old")),
                  file=sys.stderr)
            shutil.rmtree(uri)
            if server is not None and n <= 10**6:
                uri = f"s3://bench/n{n}?endpoint_override={endpoint}&scheme=http"
                written = write_store(uri, n, args.chunk)
                rows.append({"n": n, "parts": math.ceil(n / args.chunk), "storage": "s3 (moto, local)",
                             "write_seconds": written, "list": run_arm("list", uri, n, args.chunk),
                             "footer": run_arm("footer", uri, n, args.chunk)})
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
        if server is not None:
            server.stop()

    result = {"chunk": args.chunk, "rows": rows, "machine_cpus": psutil.cpu_count(),
              "load_average_1min_at_end": psutil.getloadavg()[0]}
    RESULTS.mkdir(exist_ok=True)
    (RESULTS / "parts_verify.json").write_text(json.dumps(result, indent=2))

    def cell(r: dict, key: str) -> str:
        a = r.get(key)
        if a is None:
            return "-"
        if a["seconds"] is None:
            return a["note"]
        return f"{a['seconds']:.3g} s / {a['peak_mb']:.0f} MB"

    header = ["N", "parts", "storage", "list", "footer (new)", "ids (full)", "old", "old / footer",
              "footer us/part"]
    lines = [header]
    for r in rows:
        ratio = (f"{r['old']['seconds'] / r['footer']['seconds']:.1f}x"
                 if r.get("old") and r["old"]["seconds"] else "-")
        per_part = f"{1e6 * r['footer']['seconds'] / r['parts']:.0f}"
        lines.append([f"{r['n']:.0e}", str(r["parts"]), r["storage"], cell(r, "list"), cell(r, "footer"),
                      cell(r, "ids"), cell(r, "old"), ratio, per_part])
    widths = [max(len(line[i]) for line in lines) for i in range(len(header))]
    print("time / driver peak RSS growth per arm (each in a fresh process)")
    for line in lines:
        print("  ".join(c.ljust(w) for c, w in zip(line, widths)))


if __name__ == "__main__":
    main()
