"""One-time, offline conversion of the authors' Gasoline splits (Teshima, Sato & Sugiyama, ICML 2020;
github.com/takeshi-teshima/few-shot-domain-adaptation-by-causal-mechanism-transfer, Apache-2.0) from
their `.dill` pickles to the plain CSV raygen ships (`raygen/cmt/data/teshima2020_splits.csv`).

raygen never unpickles at run time. This script reads each pickle with a restricted Unpickler that
resolves only what a pickled tuple of numpy arrays needs — numpy's ndarray, dtype and array
reconstructor, and dill's two helpers that name that reconstructor (`_import_module` of numpy's
multiarray module, `_get_attr` of `_reconstruct`), each replaced by a stand-in that accepts exactly
those names — and refuses every other global, so a tampered file raises instead of running code.

Each pickle holds one split of one target country: the standardised (float32) source and target
arrays (X_src, Y_src, c_src, X_tar_tr, Y_tar_tr, X_tar_te, Y_tar_te, c_tar_tr, c_tar_te). The
script standardises the shipped gasoline.csv the authors' way (float32, every column over the whole
panel), matches every target training / test row to its year (each row must match exactly one year
to 1e-5 and the 19 years must be covered once), checks the source rows are the other countries'
rows in CSV order, and writes one CSV line per (target, split, year): `target,split,year,role`
with role `train` or `test`, training rows in the pickle's order.

    git clone https://github.com/takeshi-teshima/few-shot-domain-adaptation-by-causal-mechanism-transfer ref
    .venv/bin/python benchmarks/cmt_convert_authors_splits.py ref/experiments/icml2020/pickle/data \
        raygen/cmt/data/teshima2020_splits.csv
"""

from __future__ import annotations

import argparse
import csv
import io
import pickle
import re
import sys
from pathlib import Path

import numpy as np

from raygen.cmt.datasets import GASOLINE_DOMAIN, GASOLINE_X, GASOLINE_Y, default_gasoline_csv

NUMPY_MULTIARRAY = ("numpy.core._multiarray_umath", "numpy._core._multiarray_umath", "numpy.core.multiarray",
                    "numpy._core.multiarray")
FILE = re.compile(r"gasoline_(?P<target>.+)_(?P<split>\d+)_(?P=target)\.dill")


class _Multiarray:
    """Stand-in for the numpy module dill names: it offers the array reconstructor and nothing else."""

    # numpy's own pickling names this function (numpy.core or numpy._core by version): take it from there
    _reconstruct = staticmethod(np.zeros(1).__reduce__()[0])


def _import_module(name: str, safe: bool = False):
    if name not in NUMPY_MULTIARRAY:
        raise pickle.UnpicklingError(f"refused: the pickle imports module {name!r}")
    return _Multiarray


def _get_attr(obj, name: str):
    if obj is not _Multiarray or name != "_reconstruct":
        raise pickle.UnpicklingError(f"refused: the pickle asks for attribute {name!r}")
    return _Multiarray._reconstruct


ALLOWED = {("dill._dill", "_import_module"): _import_module, ("dill._dill", "_get_attr"): _get_attr,
           ("numpy", "ndarray"): np.ndarray, ("numpy", "dtype"): np.dtype,
           **{(m, "_reconstruct"): _Multiarray._reconstruct for m in NUMPY_MULTIARRAY}}


class RestrictedUnpickler(pickle.Unpickler):
    def find_class(self, module: str, name: str):
        try:
            return ALLOWED[(module, name)]
        except KeyError:
            raise pickle.UnpicklingError(f"refused: the pickle asks for {module}.{name}") from None


def restricted_load(data: bytes):
    return RestrictedUnpickler(io.BytesIO(data)).load()


def authors_panel(csv_path: Path):
    """The authors' standardisation: float32 X (LINCOMEP, LRPMG, LCARPCAP) and Y, over the whole panel."""
    import pandas as pd

    df = pd.read_csv(csv_path)
    data = np.hstack([df[list(GASOLINE_X)].to_numpy(np.float32), df[[GASOLINE_Y]].to_numpy(np.float32)])
    z = (data - data.mean(0)) / data.std(0)
    return z, df[GASOLINE_DOMAIN].astype(str).to_numpy(), df["YEAR"].to_numpy(int)


def years_of(rows: np.ndarray, z_country: np.ndarray, years: np.ndarray, where: str) -> list[int]:
    out = []
    for row in rows:
        hits = np.flatnonzero(np.abs(z_country - row).max(1) < 1e-5)
        if len(hits) != 1:
            raise SystemExit(f"{where}: a row matches {len(hits)} years of the panel, not exactly one")
        out.append(int(years[hits[0]]))
    return out


def convert(pickle_dir: Path, csv_path: Path) -> list[tuple[str, int, int, str]]:
    z, country, year = authors_panel(csv_path)
    lines = []
    files = sorted(p for p in pickle_dir.iterdir() if FILE.fullmatch(p.name))
    if not files:
        raise SystemExit(f"no gasoline_<COUNTRY>_<split>_<COUNTRY>.dill files in {pickle_dir}")
    for path in files:
        m = FILE.fullmatch(path.name)
        target, split = m["target"], int(m["split"])
        arrays = restricted_load(path.read_bytes())
        x_src, y_src, c_src, x_tr, y_tr, x_te, y_te, c_tr, c_te = arrays
        mine = country == target
        src = np.hstack([x_src, y_src])
        if not (np.array_equal(c_src.astype(str), country[~mine]) and np.abs(src - z[~mine]).max() < 1e-5):
            raise SystemExit(f"{path.name}: the source rows are not the other countries' rows of {csv_path}")
        if set(c_tr.astype(str)) | set(c_te.astype(str)) != {target}:
            raise SystemExit(f"{path.name}: target rows of another country")
        train = years_of(np.hstack([x_tr, y_tr]), z[mine], year[mine], path.name)
        test = years_of(np.hstack([x_te, y_te]), z[mine], year[mine], path.name)
        if sorted(train + test) != sorted(year[mine].tolist()):
            raise SystemExit(f"{path.name}: the training and test years do not cover {target}'s years once each")
        lines += [(target, split, y, "train") for y in train] + [(target, split, y, "test") for y in sorted(test)]
    return lines


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("pickle_dir", type=Path, help="the reference repository's experiments/icml2020/pickle/data")
    parser.add_argument("out", type=Path, help="the CSV to write")
    parser.add_argument("--csv", type=Path, default=default_gasoline_csv(), help="the Gasoline panel")
    args = parser.parse_args()
    lines = convert(args.pickle_dir, args.csv)
    with args.out.open("w", newline="") as f:
        w = csv.writer(f, lineterminator="\n")
        w.writerow(["target", "split", "year", "role"])
        w.writerows(lines)
    splits = {(t, s) for t, s, _, _ in lines}
    print(f"wrote {args.out}: {len(splits)} splits of {len({t for t, _ in splits})} targets", file=sys.stderr)


if __name__ == "__main__":
    main()
