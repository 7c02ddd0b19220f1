"""The main job's config errors. It runs end to end (and reuses finished stages) in
tests/test_quickstart_cluster.py (two nodes, local disk) and tests/test_workloads_bucket.py (a bucket)."""

import pytest

from raygen.errors import UserError
from raygen.jobs import load_job


def test_quickstart_bad_keys_are_one_line_errors():
    with pytest.raises(UserError, match="'train_steps'"):
        load_job("jobs/quickstart.yaml", ["train_steps=0"])
    with pytest.raises(UserError, match="'covariance'"):
        load_job("jobs/quickstart.yaml", ["covariance=dense"])
    with pytest.raises(UserError, match="unknown config key 'nope'"):
        load_job("jobs/quickstart.yaml", ["nope=1"])
