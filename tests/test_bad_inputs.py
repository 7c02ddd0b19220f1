"""The bad-input campaign, kept fixed: each case is one clear line, a non-zero exit, no traceback,
and nothing written outside the run directory.

Each row: (id, argv after `raygen`, files to create in the working dir, a phrase the error line
must contain). `{jobs}` is the project's jobs/ directory, `{tmp}` the test's working dir. Cases
run in-process (`raygen.cli.main`); none of them may start Ray (the conftest guard checks).
"""

from __future__ import annotations

import os
import pickle
import sys
import time
from pathlib import Path

import pytest

from tests.helpers import free_port

JOBS = Path(__file__).resolve().parents[1] / "jobs"
SAMPLE = "{jobs}/sample_mog.yaml"
TRAIN = "{jobs}/train_sadm_digits.yaml"
STUDY = "{jobs}/study_digits.yaml"
TUNE = "{jobs}/tune_hypergrad.yaml"
QUICK = "{jobs}/quickstart.yaml"
ZOO = "{jobs}/zoo_digits.yaml"
WEIGHTGEN = "{jobs}/weightgen_tasks.yaml"
LOCAL_JOB = {"job.yaml": (JOBS / "sample_mog.yaml").read_text()}  # submit uploads the cwd: the job must be in it

class _Planted:
    """Unpickling this creates the file 'marker' in the working dir (which the test checks stays empty)."""

    def __init__(self, marker: str):
        self.marker = marker

    def __reduce__(self):
        return (open, (self.marker, "w"))


CASES = [
    # job files
    ("missing-job-file", ["run", "nope.yaml"], {}, "job file 'nope.yaml' not found"),
    ("invalid-yaml", ["run", "bad.yaml"], {"bad.yaml": "workload: [sample\n"}, "is not valid YAML at line"),
    ("not-a-mapping", ["run", "list.yaml"], {"list.yaml": "- 1\n- 2\n"}, "must be a mapping with a 'workload:' key"),
    ("no-workload", ["run", "nowl.yaml"], {"nowl.yaml": "name: x\n"}, "must be a mapping with a 'workload:' key"),
    ("unknown-workload", ["run", "u.yaml"], {"u.yaml": "workload: painting\n"}, "unknown workload 'painting'"),
    ("workload-list", ["run", "l.yaml"], {"l.yaml": "workload: [sample, train]\n"}, "must be one workload name"),
    ("duplicate-key", ["run", "d.yaml"], {"d.yaml": "workload: sample\nseed: 1\nseed: 2\n"}, "'seed' is given twice"),
    ("cluster-not-mapping", ["run", "c.yaml"], {"c.yaml": "workload: sample\ncluster: 3\n"},
     "'cluster:' must be a mapping"),
    ("wrong-verb", ["sample", TRAIN], {}, "is a 'train' job, not 'sample'"),
    ("wrong-verb-study", ["tune", STUDY], {}, "is a 'study' job, not 'tune'"),
    # --set
    ("set-without-equals", ["run", SAMPLE, "--set", "n_samples"], {}, "--set expects key=value"),
    ("set-empty-key", ["run", SAMPLE, "--set", "=3"], {}, "--set expects key=value"),
    ("unknown-key", ["run", SAMPLE, "--set", "n_sample=10"], {}, "unknown config key 'n_sample'"),
    ("unknown-key-train", ["run", TRAIN, "--set", "epochs=3"], {}, "unknown config key 'epochs'"),
    ("int-as-text", ["run", SAMPLE, "--set", "n_samples=many"], {}, "config key 'n_samples': expected an integer"),
    ("int-as-fraction", ["run", SAMPLE, "--set", "n_samples=2.5"], {}, "config key 'n_samples': expected an integer"),
    ("bool-as-number", ["run", TRAIN, "--set", "use_gpu=2"], {}, "config key 'use_gpu': expected true/false"),
    ("nan", ["run", SAMPLE, "--set", "step_size=nan"], {}, "config key 'step_size': expected a number"),
    ("list-expected", ["run", STUDY, "--set", "ratios=half"], {}, "config key 'ratios'"),
    ("choice", ["run", SAMPLE, "--set", "covariance=huge"], {}, "config key 'covariance': expected one of"),
    ("choice-sampler", ["run", SAMPLE, "--set", "sampler=ddim"], {}, "config key 'sampler': expected one of"),
    ("zero-samples", ["run", SAMPLE, "--set", "n_samples=0"], {}, "'n_samples'"),
    ("negative-chunk", ["run", SAMPLE, "--set", "chunk_size=-5"], {}, "'chunk_size'"),
    ("sigma-order", ["run", SAMPLE, "--set", "sigma_min=5", "--set", "sigma_max=1"], {}, "sigma_min"),
    ("zero-actors", ["run", SAMPLE, "--set", "num_actors=0"], {}, "'num_actors'"),
    ("negative-cpus", ["run", SAMPLE, "--set", "cpus_per_actor=-1"], {}, "'cpus_per_actor'"),
    ("train-zero-steps", ["run", TRAIN, "--set", "steps=0"], {}, "'steps'"),
    ("train-negative-lr", ["run", TRAIN, "--set", "lr=-1e-4"], {}, "'lr'"),
    ("train-bad-precision", ["run", TRAIN, "--set", "mixed_precision=fp8"], {}, "'mixed_precision'"),
    ("train-negative-workers", ["run", TRAIN, "--set", "num_workers=-1"], {}, "'num_workers'"),
    ("study-no-generated", ["run", STUDY, "--set", "generated="], {}, "config key 'generated'"),
    ("study-ratio-range", ["run", STUDY, "--set", "ratios=[0, 1.5]"], {}, "config key 'ratios'"),
    ("study-repeated-ratio", ["run", STUDY, "--set", "ratios=[0.2, 0.2]"], {}, "config key 'ratios'"),
    ("study-repeated-seed", ["run", STUDY, "--set", "seeds=[1, 1]"], {}, "config key 'seeds'"),
    ("study-test-fraction", ["run", STUDY, "--set", "test_fraction=1"], {}, "config key 'test_fraction'"),
    ("tune-solver", ["run", TUNE, "--set", "solvers=[magic]"], {}, "solvers"),
    ("quickstart-steps", ["run", QUICK, "--set", "train_steps=0"], {}, "'train_steps'"),
    ("quickstart-workers", ["run", QUICK, "--set", "train_workers=-2"], {}, "'train_workers'"),
    # model zoo and weight generation (more cases that read data: tests/test_workloads_zoo.py); the
    # data is checked by the workload's preflight, before Ray starts
    ("zoo-wrong-verb", ["zoo", WEIGHTGEN], {}, "is a 'weightgen' job, not 'zoo'"),
    ("zoo-task-column-and-family", ["zoo", ZOO, "--set", "task_column=t"], {}, "task_column 't' defines the tasks"),
    ("zoo-trajectory-many-tasks", ["zoo", ZOO, "--set", "mode=trajectory"], {}, "trajectory mode collects one task"),
    ("zoo-source-missing", ["zoo", ZOO, "--set", "source={tmp}/nothere"], {}, "not found; use 'digits', an image folder or a Parquet path"),
    ("zoo-too-many-classes", ["zoo", ZOO, "--set", "classes_per_task=11"], {}, "but the data has 10 classes"),
    ("weightgen-heldout-in-zoo", ["weightgen", WEIGHTGEN, "--set", "heldout_tasks=[3]"], {}, "also in the zoo"),
    ("weightgen-source-missing", ["weightgen", WEIGHTGEN, "--set", "source={tmp}/nothere"], {},
     "not found; use 'digits', an image folder or a Parquet path"),
    # job files that used to crash or hang (issue 23)
    ("binary-job-file", ["run", "b.yaml"], {"b.yaml": bytes(range(256))}, "is not UTF-8 text"),
    ("utf16-job-file", ["run", "u.yaml"], {"u.yaml": "workload: sample\n".encode("utf-16")}, "is not UTF-8 text"),
    ("huge-job-file", ["run", "h.yaml"], {"h.yaml": "workload: sample\n" + "#" * 2 * 1024**2 + "\n"},
     "a job file holds settings"),
    ("list-as-key", ["run", "k.yaml"], {"k.yaml": "workload: sample\n? [a, b]\n: 1\n"}, "is a list, not a name"),
    ("number-as-key", ["run", "k.yaml"], {"k.yaml": "workload: sample\n7: 1\n"}, "config key 7 is not a name"),
    ("deep-nesting", ["run", "n.yaml"], {"n.yaml": "workload: sample\nname: " + "[" * 20000 + "]" * 20000 + "\n"},
     "nests too deeply"),
    ("deep-nesting-set", ["run", SAMPLE, "--set", "name=" + "[" * 20000 + "]" * 20000], {}, "--set name: the value nests"),
    ("alias-bomb-name", ["run", "a.yaml"], {"a.yaml": "workload: sample\nname: [&a [x,x,x,x,x,x,x,x,x], &b [*a,*a,*a,*a,*a,*a,*a,*a,*a], &c [*b,*b,*b,*b,*b,*b,*b,*b,*b], &d [*c,*c,*c,*c,*c,*c,*c,*c,*c], &e [*d,*d,*d,*d,*d,*d,*d,*d,*d], &f [*e,*e,*e,*e,*e,*e,*e,*e,*e], &g [*f,*f,*f,*f,*f,*f,*f,*f,*f], &h [*g,*g,*g,*g,*g,*g,*g,*g,*g], &i [*h,*h,*h,*h,*h,*h,*h,*h,*h]]\n"},
     "config key 'name': the value holds more than"),
    ("alias-bomb-list-key", ["run", "a.yaml"], {"a.yaml": "workload: cmt\nn_train: [&a [x,x,x,x,x,x,x,x,x], &b [*a,*a,*a,*a,*a,*a,*a,*a,*a], &c [*b,*b,*b,*b,*b,*b,*b,*b,*b], &d [*c,*c,*c,*c,*c,*c,*c,*c,*c], &e [*d,*d,*d,*d,*d,*d,*d,*d,*d], &f [*e,*e,*e,*e,*e,*e,*e,*e,*e], &g [*f,*f,*f,*f,*f,*f,*f,*f,*f], &h [*g,*g,*g,*g,*g,*g,*g,*g,*g], &i [*h,*h,*h,*h,*h,*h,*h,*h,*h]]\n"},
     "config key 'n_train': the value holds more than"),
    ("alias-bomb-set", ["run", SAMPLE, "--set", "n_samples=[&a [x,x,x,x,x,x,x,x,x], &b [*a,*a,*a,*a,*a,*a,*a,*a,*a], &c [*b,*b,*b,*b,*b,*b,*b,*b,*b], &d [*c,*c,*c,*c,*c,*c,*c,*c,*c], &e [*d,*d,*d,*d,*d,*d,*d,*d,*d], &f [*e,*e,*e,*e,*e,*e,*e,*e,*e], &g [*f,*f,*f,*f,*f,*f,*f,*f,*f], &h [*g,*g,*g,*g,*g,*g,*g,*g,*g], &i [*h,*h,*h,*h,*h,*h,*h,*h,*h]]"], {}, "config key 'n_samples': the value holds"),
    ("nul-in-name", ["run", "z.yaml"], {"z.yaml": 'workload: sample\nname: "a\\0b"\n'}, "config key 'name'"),
    ("name-300-chars", ["run", SAMPLE, "--set", "name=" + "a" * 300], {}, "config key 'name': is 300 characters"),
    ("seed-negative", ["run", SAMPLE, "--set", "seed=-1"], {}, "config key 'seed': must be >= 0"),
    ("seed-2-to-64", ["run", SAMPLE, "--set", f"seed={2**64}"], {}, "config key 'seed': must be <="),
    ("seeds-negative", ["run", TUNE, "--set", "seeds=[0, -1]"], {}, "config key 'seeds'"),
    # secrets never reach a record: refused before anything is written or printed
    ("storage-userinfo", ["run", SAMPLE, "--set", "storage_path=s3://AKIAX:s3cr3t@bucket/runs"], {},
     "config key 'storage_path' holds credentials"),
    ("storage-key-query", ["run", SAMPLE, "--set", "storage_path=s3://bucket/runs?access_key=A&secret_key=s3cr3t"],
     {}, "never put keys in a URI"),
    ("input-userinfo", ["run", STUDY, "--set", "generated=s3://AKIAX:s3cr3t@bucket/runs/s"], {},
     "config key 'generated' holds credentials"),
    # checkpoints handed in with model=: one line, and a pickle in them runs no code (it would write 'marker')
    ("model-pickle", ["sample", SAMPLE, "--set", "model={tmp}/ck"],
     {"ck/denoiser.json": '{"size": "tiny"}', "ck/ema.pt": pickle.dumps(_Planted("marker"))},
     "ema.pt is damaged or holds pickled objects"),
    ("model-spec-not-json", ["sample", SAMPLE, "--set", "model={tmp}/ck"],
     {"ck/denoiser.json": '{"size": "tiny",', "ck/ema.pt": b""}, "denoiser.json is not a denoiser spec"),
    ("model-spec-unknown-key", ["sample", SAMPLE, "--set", "model={tmp}/ck"],
     {"ck/denoiser.json": '{"sise": "tiny"}', "ck/ema.pt": b""}, "denoiser.json is not a denoiser spec"),
    # names and storage
    ("name-dotdot", ["run", SAMPLE, "--set", "name=.."], {}, "config key 'name'"),
    ("name-dot", ["run", SAMPLE, "--set", "name=."], {}, "config key 'name'"),
    ("name-hidden", ["run", SAMPLE, "--set", "name=.cache"], {}, "config key 'name'"),
    ("name-slash", ["run", SAMPLE, "--set", "name=a/b"], {}, "config key 'name'"),
    ("name-backslash", ["run", SAMPLE, "--set", "name=a\\b"], {}, "config key 'name'"),
    ("empty-storage", ["run", SAMPLE, "--set", "storage_path="], {}, "config key 'storage_path'"),
    ("unknown-scheme", ["run", SAMPLE, "--set", "storage_path=nope://b/runs"], {}, "cannot use storage location"),
    ("storage-is-a-file", ["run", SAMPLE, "--set", "storage_path=afile/runs"], {"afile": "x"}, "is a file"),
    ("bucket-unreachable", ["run", SAMPLE, "--set", "storage_path=s3://b/runs?endpoint_override=127.0.0.1:{port}&scheme=http"],
     {}, "cannot reach storage 's3://b/runs/sample_mog': NETWORK_CONNECTION"),
    # addresses (each must fail fast: none of them may hang)
    ("address-http", ["run", SAMPLE, "--address", "http://127.0.0.1:8265"], {}, "is an HTTP (dashboard / job API) address"),
    ("address-closed", ["run", SAMPLE, "--address", "127.0.0.1:{port}"], {}, "could not connect to Ray"),
    ("address-no-port", ["run", SAMPLE, "--address", "somehost"], {}, "is not of the form host:port"),
    ("address-not-ray", ["run", SAMPLE, "--address", "127.0.0.1:{listen}"], {}, "answers but is not a Ray server"),
    # submit (fails before contacting a cluster, or contacts nothing that exists)
    ("submit-relative-storage", ["submit", "job.yaml", "--address", "http://127.0.0.1:{port}"], LOCAL_JOB,
     "is relative"),
    ("submit-closed", ["submit", "job.yaml", "--address", "http://127.0.0.1:{port}", "--set", "storage_path=/tmp/r"],
     LOCAL_JOB, "127.0.0.1"),
    ("submit-gcs-address", ["submit", "job.yaml", "--address", "ray://127.0.0.1:10001", "--set",
                            "storage_path=/tmp/r"], LOCAL_JOB, "use --address http://HEAD:8265"),
    ("submit-outside-job", ["submit", SAMPLE, "--address", "http://127.0.0.1:{port}", "--set",
                            "storage_path=/tmp/r"], {},
     "run raygen submit from the project directory"),
    ("submit-credential-file", ["submit", "job.yaml", "--address", "http://127.0.0.1:{port}", "--set",
                                "storage_path=/tmp/r"],
     {**LOCAL_JOB, "deploy-key.txt": "-----BEGIN " + "OPENSSH PRIVATE KEY-----\nb3BlbnNzaC1rZXk=\n"},
     "refusing to upload deploy-key.txt: it holds credentials"),
    ("submit-secret-env", ["submit", "job.yaml", "--address", "http://127.0.0.1:{port}", "--set",
                           "storage_path=/tmp/r"],
     {"job.yaml": LOCAL_JOB["job.yaml"] + "cluster:\n  runtime_env:\n    env_vars:\n      GITHUB_TOKEN: x\n"},
     "env_vars sets GITHUB_TOKEN, a credential"),
    ("submit-missing-job", ["submit", "nope.yaml", "--address", "http://127.0.0.1:{port}"], {}, "not found"),
    ("jobs-status-closed", ["jobs", "status", "raygen-x", "--address", "http://127.0.0.1:{port}"], {}, "127.0.0.1"),
]


@pytest.fixture
def silent_listener():
    """An open TCP port that accepts and never answers (the hang that used to ignore SIGTERM)."""
    import socket

    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    sock.listen()
    yield sock.getsockname()[1]
    sock.close()


def run_cli(argv: list[str], capsys) -> tuple[int, str, str]:
    from raygen import cli

    old = sys.argv
    sys.argv = ["raygen", *argv]
    try:
        cli.main()
        code = 0
    except SystemExit as exc:
        code = exc.code if isinstance(exc.code, int) else 1
    finally:
        sys.argv = old
    out = capsys.readouterr()
    return code, out.out, out.err


@pytest.mark.parametrize("case", CASES, ids=[c[0] for c in CASES])
def test_bad_input_is_one_clear_line(case, tmp_path, monkeypatch, capsys, silent_listener):
    name, argv, files, phrase = case
    monkeypatch.chdir(tmp_path)
    for rel, text in files.items():
        (tmp_path / rel).parent.mkdir(parents=True, exist_ok=True)
        if isinstance(text, bytes):
            (tmp_path / rel).write_bytes(text)
        else:
            (tmp_path / rel).write_text(text)
    values = {"jobs": str(JOBS), "tmp": str(tmp_path), "port": free_port(), "listen": silent_listener}
    argv = [a.format(**values) for a in argv]
    before = sorted(os.listdir(tmp_path))
    # a refused address must not switch this process to token auth (a later local Ray would not start)
    auth_mode = os.environ.get("RAY_AUTH_MODE")
    home = tmp_path.parent / f"{tmp_path.name}-home"
    (home / ".ray").mkdir(parents=True)
    (home / ".ray" / "auth_token").write_text("a-token")
    monkeypatch.setenv("HOME", str(home))
    monkeypatch.delenv("RAY_AUTH_TOKEN", raising=False)
    monkeypatch.delenv("RAY_AUTH_TOKEN_PATH", raising=False)
    start = time.monotonic()
    code, out, err = run_cli(argv, capsys)
    assert os.environ.get("RAY_AUTH_MODE") == auth_mode
    assert time.monotonic() - start < 30, "bad input must fail within 30 s"
    assert code != 0, out + err
    lines = [line for line in err.splitlines() if line.strip()]
    assert len(lines) == 1, err
    assert "Traceback" not in err + out
    assert phrase in lines[0], lines[0]
    assert sorted(os.listdir(tmp_path)) == before, "nothing may be written for a refused command"


def test_there_are_at_least_sixty_cases():
    assert len(CASES) >= 55  # plus the workload-specific cases in their own test modules
