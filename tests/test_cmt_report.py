"""raygen.cmt.report: selection by nested LOO, relative scores, mean (SE), wins without ties."""

import math

import numpy as np
import pytest

from raygen.cmt.krr import ALPHAS, median_gamma, rbf
from raygen.cmt.report import counts, hindsight, loo_reference, markdown_table, select, table


def _t(target, split, method, nested, test, setting=None, loocv=0.0):
    # loocv (the leaky partial LOOCV) defaults to the lowest value: selection must not look at it
    return {"target": target, "n": 6, "split": split, "method": method, "nested_loo_mse": nested, "loocv_mse": loocv,
            "test_mse": test, "setting": setting}


def test_selection_table_and_tallies():
    trials = [
        # cmt: two settings per split; the lower nested LOO wins even though its test MSE is worse
        _t("A", 0, "cmt", 0.1, 4.0, "s1"), _t("A", 0, "cmt", 0.2, 1.0, "s2"),
        _t("A", 1, "cmt", 0.3, 1.0, "s1"), _t("A", 1, "cmt", 0.2, 2.0, "s2"),
        _t("A", 0, "target_only", 0.5, 2.0), _t("A", 1, "target_only", 0.5, 4.0),
        _t("B", 0, "cmt", 0.1, 3.0), _t("B", 1, "cmt", 0.1, 3.0),
        _t("B", 0, "target_only", 0.1, 3.0), _t("B", 1, "target_only", 0.1, 3.0),  # a tie
    ]
    selected = select(trials, {"A": 2.0, "B": 1.0})
    a_cmt = [s for s in selected if s["target"] == "A" and s["method"] == "cmt"]
    assert [s["setting"] for s in a_cmt] == ["s1", "s2"] and [s["relative_mse"] for s in a_cmt] == [2.0, 1.0]
    rows = table(selected, ["cmt", "target_only"])
    a, b = rows
    assert a["cells"]["cmt"][0] == 1.5 and a["cells"]["cmt"][1] == pytest.approx(0.5)  # SE = std(ddof=1)/sqrt(2)
    assert a["cells"]["target_only"][:2] == (1.5, pytest.approx(0.5))  # (1.0, 2.0) relative
    assert a["best"] == ["cmt", "target_only"] and b["best"] == ["cmt", "target_only"]
    tallies = counts(rows, ["cmt", "target_only"])
    assert tallies["cmt"] == {"wins": 0, "tied_best": 2, "beats_target_only": 0, "rows": 2, "mean": 2.25}
    md = markdown_table(rows, ["cmt", "target_only"], tallies)
    assert "| A | 6 | **1.50 (0.50)** | **1.50 (0.50)** |" in md and "| **# best (sole)** | | 0 | 0 |" in md


def test_single_split_has_no_standard_error():
    rows = table(select([_t("A", 0, "cmt", 0.1, 1.0)], {"A": 1.0}), ["cmt"])
    assert math.isnan(rows[0]["cells"]["cmt"][1]) and rows[0]["best"] == ["cmt"]


def test_selection_ignores_the_leaky_partial_loocv():
    trials = [_t("A", 0, "cmt", 0.5, 1.0, "s1", loocv=0.01), _t("A", 0, "cmt", 0.2, 9.0, "s2", loocv=0.3)]
    (chosen,) = select(trials, {"A": 1.0})
    assert chosen["setting"] == "s2"


@pytest.mark.parametrize("form", ["reference", "dual"])
def test_loo_reference_is_the_target_only_loocv_on_all_points(form):
    rng = np.random.default_rng(0)
    z = rng.standard_normal((19, 4))
    brute = []
    x, y, gamma = z[:, :-1], z[:, -1], median_gamma(z[:, :-1])
    K = rbf(x, x, gamma)
    for alpha in ALPHAS:
        res = []
        for i in range(19):
            keep = np.arange(19) != i
            if form == "dual":
                coef = np.linalg.solve(K[keep][:, keep] + alpha * np.eye(18), y[keep])
                res.append(y[i] - K[i, keep] @ coef)
            else:  # ridge on the (all kept) kernel columns, row i left out
                theta = np.linalg.solve(K[keep].T @ K[keep] + alpha * np.eye(19), K[keep].T @ y[keep])
                res.append(y[i] - K[i] @ theta)
        brute.append(np.mean(np.square(res)))
    assert loo_reference(z, form) == pytest.approx(min(brute), rel=1e-9)


def test_hindsight_takes_the_best_test_mse_over_settings_and_epochs():
    trials = [{**_t("A", 0, "cmt", 0.1, 4.0, "s1"), "hindsight_test_mse": 3.0},
              {**_t("A", 0, "cmt", 0.2, 5.0, "s2"), "hindsight_test_mse": 1.0},
              {**_t("A", 1, "cmt", 0.1, 2.0, "s1"), "hindsight_test_mse": 2.0},
              {**_t("A", 0, "target_only", 0.1, 3.0), "hindsight_test_mse": 3.0},
              {**_t("A", 1, "target_only", 0.1, 3.0), "hindsight_test_mse": 3.0}]
    refs = {"A": 2.0}
    rows = table(select(trials, refs), ["cmt", "target_only"])
    assert rows[0]["cells"]["cmt"][0] == 1.5  # LOOCV-selected: (4/2 + 2/2) / 2
    assert hindsight(trials, refs, rows, "cmt") == {"mean": 0.75, "beats_target_only": 1, "rows": 1}  # (1/2 + 2/2) / 2
