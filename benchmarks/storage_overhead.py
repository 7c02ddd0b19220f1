"""Sampling with the run directory in a bucket vs on local disk (issue 10: overhead target < 10 %).

The same `raygen sample` run (MMDGS on the analytic mixture, default chunk size 500) is timed with
`storage_path` on local disk and on a local S3-compatible server (moto in server mode, started
here on 127.0.0.1), alternating arms over several repeats in one process, on the same local Ray.
Reported: samples/s per arm (median over repeats) and the bucket/local ratio.

Decision rule (written before the run): the bucket meets the target if the median ratio of
samples/s (bucket / local) is >= 0.90.

Caveat: the S3 server runs in this process (threads), so it competes with the driver for the GIL
and with the actors for the 2 cores; a real S3 endpoint costs latency instead. Part writes are
one PUT per chunk, so the overhead scales with parts, not samples.

    .venv/bin/python benchmarks/storage_overhead.py [--quick]

writes benchmarks/results/storage_overhead.json and prints a table.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import socket
import statistics
import tempfile
import time
from pathlib import Path

from raygen import runtime
from raygen.workloads.sample import SampleConfig, run

RESULTS = Path(__file__).parent / "results"


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="a smoke run (small N, one repeat)")
    parser.add_argument("--n", type=int, default=20000, help="samples per run")
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    n, repeats = (2000, 1) if args.quick else (args.n, args.repeats)

    os.environ.setdefault("AWS_ACCESS_KEY_ID", "bench")
    os.environ.setdefault("AWS_SECRET_ACCESS_KEY", "bench")
    import pyarrow.fs as pafs
    from moto.server import ThreadedMotoServer

    logging.getLogger("werkzeug").setLevel(logging.ERROR)
    port = _free_port()
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=port, verbose=False)
    server.start()
    pafs.S3FileSystem(endpoint_override=f"127.0.0.1:{port}", scheme="http", allow_bucket_creation=True).create_dir("bench")
    bucket = f"s3://bench/runs?endpoint_override=127.0.0.1:{port}&scheme=http"
    runtime.init()
    local_root = tempfile.mkdtemp(prefix="raygen-bench-")
    base = dict(n_samples=n, levels=6, steps_per_level=2, num_actors=2)
    run(SampleConfig(name="warmup", storage_path=local_root, **{**base, "n_samples": 1000}))  # starts Ray's workers

    rates: dict[str, list[float]] = {"local": [], "bucket": []}
    for r in range(repeats):
        for arm, root in (("local", local_root), ("bucket", bucket)):
            start = time.perf_counter()
            run(SampleConfig(name=f"{arm}{r}", storage_path=root, **base))
            rates[arm].append(n / (time.perf_counter() - start))
    server.stop()

    local, remote = statistics.median(rates["local"]), statistics.median(rates["bucket"])
    result = {"n_samples": n, "repeats": repeats, "chunk_size": SampleConfig().chunk_size, "samples_per_s": rates,
              "median_local": local, "median_bucket": remote, "ratio_bucket_over_local": remote / local,
              "meets_target": remote / local >= 0.90, "load_avg_1m": os.getloadavg()[0]}
    RESULTS.mkdir(exist_ok=True)
    (RESULTS / "storage_overhead.json").write_text(json.dumps(result, indent=2))
    print(f"{'arm':<8}{'samples/s (median)':>20}{'runs':>30}")
    for arm, value in (("local", local), ("bucket", remote)):
        print(f"{arm:<8}{value:>20.1f}{str([round(x, 1) for x in rates[arm]]):>30}")
    print(f"bucket / local = {remote / local:.3f} (target >= 0.90: {'met' if result['meets_target'] else 'NOT met'}); "
          f"load average {result['load_avg_1m']:.1f}")


if __name__ == "__main__":
    main()
