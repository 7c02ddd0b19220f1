"""raygen.cmt.datasets: the shipped Gasoline panel, the synthetic mechanism, splits, one-line errors for bad CSVs."""

import numpy as np
import pandas as pd
import pytest

from raygen.cmt.datasets import default_gasoline_csv, load_gasoline, split_target, synthetic_panel
from raygen.errors import UserError


def test_shipped_gasoline_panel():
    panel = load_gasoline()
    assert len(panel.names) == 18 and panel.z.shape == (342, 4)
    assert "CANADA" in panel.names and "U.S.A." in panel.names
    assert panel.columns == ("LINCOMEP", "LRPMG", "LCARPCAP", "LGASPCAR")  # Y last, YEAR dropped
    np.testing.assert_allclose(panel.z.mean(0), 0, atol=1e-12)
    np.testing.assert_allclose(panel.z.std(0), 1, atol=1e-12)
    raw = pd.read_csv(default_gasoline_csv())
    y = raw["LGASPCAR"].to_numpy()
    np.testing.assert_allclose(panel.z[:, -1], (y - y.mean()) / y.std())
    assert all(len(panel.rows_of(c)) == 19 for c in panel.names)


def test_split_is_seeded_and_partitions_the_target():
    panel = load_gasoline()
    rng = lambda s: np.random.default_rng(s)
    a = split_target(panel, "JAPAN", 6, rng(1))
    b = split_target(panel, "JAPAN", 6, rng(1))
    assert np.array_equal(a.z_train, b.z_train) and not np.array_equal(a.z_train, split_target(panel, "JAPAN", 6, rng(2)).z_train)
    assert a.z_train.shape == (6, 4) and a.z_test.shape == (13, 4) and a.z_source.shape == (323, 4)
    rows = {tuple(r) for r in np.concatenate([a.z_train, a.z_test])}
    assert rows == {tuple(r) for r in panel.rows_of("JAPAN")}
    assert sorted(set(a.u_source.tolist())) == list(range(17))  # sources relabelled 0..K-1


def test_synthetic_mechanism_is_inverted_in_closed_form():
    panel = synthetic_panel(np.random.default_rng(0), n_sources=5, source_size=30, target_size=40)
    assert panel.names[-1] == "target" and panel.z.shape == (190, 4)
    s = np.random.default_rng(0).standard_normal((50, 4))
    np.testing.assert_allclose(panel.mechanism.f_inv(panel.mechanism.f(s)), s, atol=1e-10)


def _write(tmp_path, df) -> str:
    path = tmp_path / "g.csv"
    df.to_csv(path, index=False)
    return str(path)


def _one_line(excinfo) -> str:
    message = str(excinfo.value)
    assert "\n" not in message
    return message


def test_csv_missing_a_column(tmp_path):
    df = pd.read_csv(default_gasoline_csv()).drop(columns=["LRPMG"])
    with pytest.raises(UserError) as excinfo:
        load_gasoline(_write(tmp_path, df))
    assert "no column 'LRPMG'" in _one_line(excinfo)


def test_csv_with_a_non_numeric_value(tmp_path):
    df = pd.read_csv(default_gasoline_csv()).astype({"LINCOMEP": object})
    df.loc[5, "LINCOMEP"] = "n/a"
    with pytest.raises(UserError) as excinfo:
        load_gasoline(_write(tmp_path, df))
    assert "'LINCOMEP'" in _one_line(excinfo) and "line 6" in str(excinfo.value)


@pytest.mark.parametrize("values", [[1e308], [1e308, -1e308], [1e200]])
def test_csv_value_too_large_to_standardise(tmp_path, values):
    # finite, so it passes the finiteness check; squaring it in the std overflows
    df = pd.read_csv(default_gasoline_csv())
    for row, v in enumerate(values):
        df.loc[3 + row, "LCARPCAP"] = v
    with pytest.raises(UserError) as excinfo:
        load_gasoline(_write(tmp_path, df))
    assert "column 'LCARPCAP' has values too large" in _one_line(excinfo)


@pytest.mark.parametrize("constant", [0.0, 0.1, -3.7])
def test_csv_constant_column(tmp_path, constant):
    df = pd.read_csv(default_gasoline_csv())
    df["LRPMG"] = constant  # 0.1 repeated: numpy's std is round-off (~1e-17), not 0
    with pytest.raises(UserError) as excinfo:
        load_gasoline(_write(tmp_path, df))
    assert "column 'LRPMG' is constant" in _one_line(excinfo)


def test_domain_column_with_one_domain(tmp_path):
    df = pd.read_csv(default_gasoline_csv())
    df["COUNTRY"] = "ATLANTIS"
    with pytest.raises(UserError) as excinfo:
        load_gasoline(_write(tmp_path, df))
    assert "1 domain(s) ('ATLANTIS')" in _one_line(excinfo)


def test_target_with_fewer_points_than_n(tmp_path):
    df = pd.read_csv(default_gasoline_csv())
    df = df[(df["COUNTRY"] != "JAPAN") | (df["YEAR"] < 1965)]  # 5 Japanese years left
    panel = load_gasoline(_write(tmp_path, df))
    with pytest.raises(UserError) as excinfo:
        split_target(panel, "JAPAN", 6, np.random.default_rng(0))
    assert "'JAPAN' has 5 points" in _one_line(excinfo)
    with pytest.raises(UserError, match="unknown target domain 'MARS'"):
        split_target(panel, "MARS", 6, np.random.default_rng(0))


def test_missing_csv_file(tmp_path):
    with pytest.raises(UserError, match="not found"):
        load_gasoline(tmp_path / "nope.csv")
