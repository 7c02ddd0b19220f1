"""Fixed few-shot splits (`splits_from`): the shipped authors' splits, a small fixture read back
exactly, pickles refused without being run, bad files one line, and a cmt trial using exactly the
listed rows. The offline converter checked on one of the authors' own pickles."""

import importlib.util
import pickle
from pathlib import Path

import numpy as np
import pytest

from raygen.cmt.datasets import fixed_split, load_gasoline, load_splits
from raygen.errors import UserError
from raygen.jobs import load_job
from raygen.workloads import cmt as workload

ROOT = Path(__file__).resolve().parents[1]
FIXTURE = """target,split,year,role
AUSTRIA,0,1970,train
AUSTRIA,0,1961,train
AUSTRIA,0,1963,train
AUSTRIA,0,1975,train
AUSTRIA,0,1977,train
AUSTRIA,0,1967,train
""" + "".join(f"AUSTRIA,0,{y},test\n" for y in (1960, 1962, 1964, 1965, 1966, 1968, 1969, 1971, 1972, 1973, 1974,
                                                   1976, 1978)) + """BELGIUM,1,1978,train
BELGIUM,1,1960,train
BELGIUM,1,1965,train
""" + "".join(f"BELGIUM,1,{y},test\n" for y in range(1960, 1979) if y not in (1978, 1960, 1965))


def converter():
    spec = importlib.util.spec_from_file_location("cmt_convert", ROOT / "benchmarks" / "cmt_convert_authors_splits.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def rows_of_years(panel, target, years):
    mine = panel.domain == panel.names.index(target)
    return np.stack([panel.z[mine][list(panel.year[mine]).index(y)] for y in years])


def test_fixture_is_read_back_exactly(tmp_path):
    (tmp_path / "s.csv").write_text(FIXTURE)
    splits = load_splits(str(tmp_path / "s.csv"))
    assert set(splits) == {("AUSTRIA", 0), ("BELGIUM", 1)}
    assert splits[("AUSTRIA", 0)][0] == (1970, 1961, 1963, 1975, 1977, 1967)  # the file's order
    assert splits[("BELGIUM", 1)][0] == (1978, 1960, 1965) and len(splits[("BELGIUM", 1)][1]) == 16
    panel = load_gasoline()
    panel = type(panel)(**{**panel.__dict__, "splits": splits})
    split = fixed_split(panel, "AUSTRIA", 0)
    assert np.array_equal(split.z_train, rows_of_years(panel, "AUSTRIA", [1970, 1961, 1963, 1975, 1977, 1967]))
    assert np.array_equal(split.z_test, rows_of_years(panel, "AUSTRIA", splits[("AUSTRIA", 0)][1]))
    assert split.z_source.shape == (323, 4) and sorted(set(split.u_source.tolist())) == list(range(17))
    with pytest.raises(UserError, match="no split 1 for target 'AUSTRIA'"):
        fixed_split(panel, "AUSTRIA", 1)


def test_shipped_authors_splits():
    splits = load_splits("teshima2020")
    panel = load_gasoline()
    assert len(splits) == 180 and {t for t, _ in splits} == set(panel.names)
    assert {s for _, s in splits} == set(range(10))
    for train, test in splits.values():
        assert len(train) == 6 and len(test) == 13 and sorted(train + test) == list(range(1960, 1979))
    # pinned from the authors' pickle gasoline_AUSTRIA_0_AUSTRIA.dill (see the converter test below)
    assert splits[("AUSTRIA", 0)][0] == (1970, 1961, 1963, 1975, 1977, 1967)
    assert len({train for train, _ in splits.values()}) == 180  # no two splits alike


class _Trap:
    """Unpickling this would create a file: the refusal must come before any unpickling."""

    def __init__(self, path):
        self.path = path

    def __reduce__(self):
        return (Path.touch, (Path(self.path),))


@pytest.mark.parametrize("name", ["s.dill", "s.csv"])
def test_a_pickle_is_refused_and_not_run(tmp_path, name):
    marker = tmp_path / "ran"
    (tmp_path / name).write_bytes(pickle.dumps(_Trap(str(marker)), protocol=2))
    with pytest.raises(UserError, match="is a pickle; raygen never unpickles"):
        load_splits(str(tmp_path / name))
    assert not marker.exists()


@pytest.mark.parametrize("text, phrase", [
    ("a,b,c\n", "the first line must be target,split,year,role"),
    ("target,split,year,role\nAUSTRIA,x,1960,train\n", "line 2: expected target,split,year,role"),
    ("target,split,year,role\nAUSTRIA,0,1960,holdout\n", "role must be train or test"),
    ("target,split,year,role\nAUSTRIA,0,1960,train\nAUSTRIA,0,1960,test\n", "year 1960 listed twice"),
    ("target,split,year,role\n", "lists no split"),
])
def test_bad_split_files_are_one_line(tmp_path, text, phrase):
    (tmp_path / "s.csv").write_text(text)
    with pytest.raises(UserError, match=phrase):
        load_splits(str(tmp_path / "s.csv"))
    with pytest.raises(UserError, match="no such file"):
        load_splits(str(tmp_path / "absent.csv"))


def test_preflight_checks_every_listed_split(tmp_path):
    (tmp_path / "s.csv").write_text(FIXTURE)
    base = dict(name="fixed", storage_path=str(tmp_path), splits_from=str(tmp_path / "s.csv"), splits=1)
    with pytest.raises(UserError, match="no split 0 for target 'BELGIUM'"):
        workload.preflight(workload.CmtConfig.from_dict({**base, "targets": ["AUSTRIA", "BELGIUM"]}))
    with pytest.raises(UserError, match="6 training points, not n_train=5; set n_train: \\[6\\]"):
        workload.preflight(workload.CmtConfig.from_dict({**base, "targets": ["AUSTRIA"], "n_train": [5]}))
    with pytest.raises(UserError, match="config key 'splits_from': only used with data: gasoline"):
        workload.CmtConfig.from_dict({**base, "data": "synthetic"})
    paper = load_job("jobs/cmt_gasoline_paper.yaml").config
    assert paper.splits_from == "teshima2020"


def test_a_cmt_trial_uses_exactly_the_listed_rows(tmp_path, monkeypatch):
    """Through the workload's own preflight and run_trial (what each Tune trial runs): the split handed
    to the method is the file's rows, in the file's order; target-only's test MSE is the fit on them."""
    from raygen.cmt import methods
    from raygen.cmt.krr import fit_krr

    (tmp_path / "s.csv").write_text(FIXTURE)
    config = workload.CmtConfig.from_dict(dict(name="fixed", storage_path=str(tmp_path), targets=["AUSTRIA"],
                                               splits=1, methods=["target_only"], splits_from=str(tmp_path / "s.csv")))
    panel, specs = workload.preflight(config)
    seen = []
    real = methods.run_method
    monkeypatch.setattr(methods, "run_method", lambda method, split, **kw: seen.append(split) or real(method, split, **kw))
    (result,) = workload.run_trial({"trial": specs[0]}, panel=panel, job=config.to_dict())
    (split,) = seen
    train = rows_of_years(panel, "AUSTRIA", [1970, 1961, 1963, 1975, 1977, 1967])
    test_years = [1960, 1962, 1964, 1965, 1966, 1968, 1969, 1971, 1972, 1973, 1974, 1976, 1978]
    assert np.array_equal(split.z_train, train)
    assert np.array_equal(split.z_test, rows_of_years(panel, "AUSTRIA", test_years))
    model = fit_krr(train[:, :-1], train[:, -1], form=config.krr_form)
    test = split.z_test
    assert result["test_mse"] == pytest.approx(float(np.mean((model.predict(test[:, :-1]) - test[:, -1]) ** 2)),
                                               rel=1e-12)


def test_converter_reproduces_the_shipped_lines_from_an_authors_pickle(tmp_path):
    conv = converter()
    lines = conv.convert(ROOT / "tests" / "fixtures" / "cmt", conv.default_gasoline_csv())
    shipped = [tuple(line.split(",")) for line in
               load_splits.__globals__["resources"].files("raygen.cmt").joinpath(
                   "data", "teshima2020_splits.csv").read_text().splitlines()[1:20]]
    assert [(t, str(s), str(y), r) for t, s, y, r in lines] == shipped


def test_converter_refuses_every_global_but_numpy_arrays(tmp_path):
    conv = converter()
    arrays = (np.arange(3, dtype=np.float32)[:, None], np.array(["AUSTRIA"], dtype=object))
    back = conv.restricted_load(pickle.dumps(arrays, protocol=4))
    assert np.array_equal(back[0], arrays[0]) and back[1].tolist() == ["AUSTRIA"]
    marker = tmp_path / "ran"
    with pytest.raises(pickle.UnpicklingError, match="refused: the pickle asks for "):
        conv.restricted_load(pickle.dumps(_Trap(str(marker)), protocol=2))
    assert not marker.exists()
    with pytest.raises(pickle.UnpicklingError, match="refused: the pickle imports module 'os'"):
        conv._import_module("os")
