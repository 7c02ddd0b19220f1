"""Digests of the parts a tiny sample, zoo and weightgen run write: for checking a refactor changes no output.

Runs the three fan-out workloads on tiny settings into OUT and prints, per part, a digest of its
table (every column's values) and its raygen metadata, plus the file's sha256. Run it on two
checkouts (e.g. `git worktree add /tmp/base <commit>`, then `PYTHONPATH=/tmp/base python
/tmp/base/benchmarks/parts_digest.py /tmp/before`) and compare the two JSON files: the fan-out
refactor (issue 22) left all 11 parts byte-identical on this machine. Digests are only comparable
on one machine (float rounding may differ between CPUs).

    .venv/bin/python benchmarks/parts_digest.py [OUT_DIR]    # writes OUT_DIR/digests.json
"""

from __future__ import annotations

import argparse
import hashlib
import json
import tempfile
from pathlib import Path

TINY_TASKS = dict(mode="tasks", task_family="subset", zoo_tasks=2, heldout_tasks=[7], classes_per_task=3, seeds=2,
                  member_steps=40, ae_steps=30, diff_steps=30, n_generate=4, sample_steps=4, latent_dim=8,
                  ae_hidden=32, diff_hidden=32, diff_depth=1, cond_dim=8, support_shots=2, finetune_steps=4,
                  finetune_every=2, finetune_models=1, log_every=10, jobs_per_part=2)


def main() -> None:
    import pyarrow.parquet as pq

    from raygen import runtime
    from raygen.workloads import sample, weightgen, zoo

    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("out", nargs="?", default=None, help="where the runs go (default: a new temp directory)")
    parser.add_argument("--quick", action="store_true", help="accepted for `make bench`; the runs are tiny anyway")
    args = parser.parse_args()
    out = Path(args.out or tempfile.mkdtemp(prefix="raygen-digest-"))
    out.mkdir(parents=True, exist_ok=True)
    runtime.init(num_cpus=2)
    sample.run(sample.SampleConfig.from_dict({"name": "s", "storage_path": str(out), "n_samples": 300,
                                              "chunk_size": 70, "covariance": "diag"}))
    zoo.run(zoo.ZooConfig.from_dict({"name": "z", "storage_path": str(out), "checkpoints": 6, "member_steps": 30}))
    weightgen.run(weightgen.WeightgenConfig.from_dict({**TINY_TASKS, "name": "w", "storage_path": str(out)}))
    digests = {}
    for path in sorted(out.rglob("part-*.parquet")):
        table, h = pq.read_table(path), hashlib.sha256()
        for name in table.column_names:
            h.update(name.encode())
            h.update(repr(table.column(name).to_pylist()).encode())
        h.update((table.schema.metadata or {}).get(b"raygen", b""))
        digests[str(path.relative_to(out))] = {"content": h.hexdigest()[:16],
                                               "file": hashlib.sha256(path.read_bytes()).hexdigest()[:16]}
    (out / "digests.json").write_text(json.dumps(digests, indent=1))
    width = max(map(len, digests))
    for name, d in digests.items():
        print(f"{name:<{width}}  {d['content']}  {d['file']}")


if __name__ == "__main__":
    main()
