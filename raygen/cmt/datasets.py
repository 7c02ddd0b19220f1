"""Multi-domain tabular data Z = (X, Y) for causal mechanism transfer, and the few-shot target split.

Two sources:
- the Gasoline panel (Baltagi & Griffin 1983; shipped as raygen/cmt/data/gasoline.csv): each country is
  a domain; Z = (LINCOMEP, LRPMG, LCARPCAP, LGASPCAR), Y = LGASPCAR last, YEAR dropped; every column
  standardised over the whole panel (as the paper's reference code does).
  The authors' 180 splits of it ship as raygen/cmt/data/teshima2020_splits.csv (plain CSV, one line
  per target, split, year and role; see that folder's README): `load_splits` reads them or a user's
  CSV of the same form, and refuses a pickle.
- a synthetic benchmark with a known mechanism f, D = 4, of structural-equation form (each variable
  a function of its causes plus its own independent component, so f⁻¹ follows by substitution):

      x₁ = s₁,  x₂ = s₂ + tanh(2x₁)/2,  x₃ = s₃ − 0.4·x₁x₂,  y = g(x) + 0.2·s₄,
      g(x) = sin(x₁) + x₃·tanh(x₂)/2 + 0.3·x₂;

  in domain k component d is s_d = μ_kd + σ_kd·ε with ε ~ Laplace of unit variance,
  μ_kd ~ U(−1, 1), σ_kd ~ U(0.3, 1.5): the domains differ in their component laws only.
"""

from __future__ import annotations

import dataclasses
from importlib import resources
from pathlib import Path

import numpy as np

from raygen.errors import UserError

GASOLINE_DOMAIN = "COUNTRY"
GASOLINE_X = ("LINCOMEP", "LRPMG", "LCARPCAP")
GASOLINE_Y = "LGASPCAR"


@dataclasses.dataclass(frozen=True)
class Mechanism:
    """The synthetic benchmark's true f and f⁻¹ (structural equations, see the module docstring)."""

    noise: float = 0.2

    @staticmethod
    def g(x: np.ndarray) -> np.ndarray:
        return np.sin(x[:, 0]) + x[:, 2] * np.tanh(x[:, 1]) / 2 + 0.3 * x[:, 1]

    def f(self, s: np.ndarray) -> np.ndarray:
        x1 = s[:, 0]
        x2 = s[:, 1] + np.tanh(2 * x1) / 2
        x3 = s[:, 2] - 0.4 * x1 * x2
        x = np.stack([x1, x2, x3], axis=1)
        return np.column_stack([x, self.g(x) + self.noise * s[:, 3]])

    def f_inv(self, z: np.ndarray) -> np.ndarray:
        x1, x2, x3 = z[:, 0], z[:, 1], z[:, 2]
        return np.stack([x1, x2 - np.tanh(2 * x1) / 2, x3 + 0.4 * x1 * x2, (z[:, 3] - self.g(z)) / self.noise], axis=1)


@dataclasses.dataclass(frozen=True)
class Panel:
    z: np.ndarray  # [N, D] rows, Y in the last column
    domain: np.ndarray  # [N] index into names
    names: tuple[str, ...]
    columns: tuple[str, ...]
    mechanism: Mechanism | None = None  # known only for synthetic data
    year: np.ndarray | None = None  # [N] the gasoline CSV's YEAR, which names a row within its domain
    splits: dict | None = None  # fixed few-shot splits by year (load_splits); None: drawn by split_target

    def rows_of(self, name: str) -> np.ndarray:
        return self.z[self.domain == self.names.index(name)]


@dataclasses.dataclass(frozen=True)
class Split:
    """One few-shot problem: all source rows (domain labels 0..K−1), n target training rows, the rest to test."""

    z_source: np.ndarray
    u_source: np.ndarray
    z_train: np.ndarray
    z_test: np.ndarray
    z_target: np.ndarray  # all target rows (for the LOO reference)


def default_gasoline_csv() -> Path:
    return Path(str(resources.files("raygen.cmt") / "data" / "gasoline.csv"))


SHIPPED_SPLITS = {"teshima2020": "teshima2020_splits.csv"}
SPLITS_HEADER = ["target", "split", "year", "role"]
CONVERTER = "benchmarks/cmt_convert_authors_splits.py"


def load_splits(source: str) -> dict[tuple[str, int], tuple[tuple[int, ...], tuple[int, ...]]]:
    """Few-shot splits from a plain CSV (`target,split,year,role`, role train or test; training years
    kept in the file's order): {(target, split): (train years, test years)}.

    `source` is a shipped name ("teshima2020", the authors' splits) or a path. A pickle is refused:
    unpickling can run arbitrary code; convert it offline with the restricted converter instead.
    """
    import csv

    path = Path(str(resources.files("raygen.cmt") / "data" / SHIPPED_SPLITS[source])) if source in SHIPPED_SPLITS \
        else Path(source)
    where = f"splits_from {source!r}"
    if not path.is_file():
        raise UserError(f"{where}: no such file; give a CSV of target,split,year,role or one of "
                        f"{', '.join(SHIPPED_SPLITS)}")
    data = path.read_bytes()
    if data[:1] == b"\x80" or path.suffix in (".dill", ".pkl", ".pickle"):
        raise UserError(f"{where} is a pickle; raygen never unpickles (it can run code): convert it to CSV with "
                        f"{CONVERTER}")
    try:
        rows = list(csv.reader(data.decode("utf-8").splitlines()))
    except UnicodeDecodeError:
        raise UserError(f"{where} is not a text CSV; it needs the columns {','.join(SPLITS_HEADER)}") from None
    if not rows or [c.strip() for c in rows[0]] != SPLITS_HEADER:
        raise UserError(f"{where}: the first line must be {','.join(SPLITS_HEADER)} (found "
                        f"{','.join(rows[0]) if rows else 'an empty file'!r})")
    splits: dict[tuple[str, int], tuple[list[int], list[int]]] = {}
    seen: set[tuple[str, int, int]] = set()
    for line, row in enumerate(rows[1:], start=2):
        if not row:
            continue
        try:
            target, split, year, role = row
            key = (target, int(split), int(year))
        except ValueError:
            raise UserError(f"{where} line {line}: expected target,split,year,role with integer split and year, "
                            f"got {','.join(row)!r}") from None
        if role not in ("train", "test") or key[1] < 0:
            raise UserError(f"{where} line {line}: role must be train or test and split >= 0, got {','.join(row)!r}")
        if key in seen:
            raise UserError(f"{where} line {line}: year {key[2]} listed twice for {target!r} split {key[1]}")
        seen.add(key)
        splits.setdefault(key[:2], ([], []))[role == "test"].append(key[2])
    if not splits:
        raise UserError(f"{where} lists no split")
    return {k: (tuple(train), tuple(test)) for k, (train, test) in splits.items()}


def fixed_split(panel: Panel, target: str, split: int) -> Split:
    """Split `split` of `target` as panel.splits lists it (by year); checked against the panel's years."""
    t = _target_index(panel, target)
    if (target, split) not in panel.splits:
        have = sorted(s for t, s in panel.splits if t == target)
        raise UserError(f"splits_from has no split {split} for target {target!r} (it has "
                        f"{len(have)}{': ' + ', '.join(map(str, have)) if have else ''}); lower `splits` or pick "
                        "targets it lists")
    if panel.year is None:
        raise UserError("splits_from names rows by year: the gasoline CSV needs a YEAR column")
    train, test = panel.splits[(target, split)]
    mine = panel.domain == t
    row_of = {int(y): i for i, y in enumerate(panel.year[mine])}
    if len(row_of) != int(mine.sum()) or sorted(train + test) != sorted(row_of):
        raise UserError(f"splits_from split {split} of {target!r} lists years {sorted(train + test)}, not each of "
                        f"the panel's years for it ({sorted(row_of)}) once")
    return _hold_out(panel, t, [row_of[y] for y in train], [row_of[y] for y in test])


def _target_index(panel: Panel, target: str) -> int:
    if target not in panel.names:
        raise UserError(f"unknown target domain {target!r}; valid: {', '.join(panel.names)}")
    return panel.names.index(target)


def _hold_out(panel: Panel, t: int, train, test) -> Split:
    """Domain t's rows `train` / `test` (indices into its rows) as the target; every other domain a source."""
    z_target = panel.z[panel.domain == t]
    source = panel.domain != t
    u = panel.domain[source]
    return Split(z_source=panel.z[source], u_source=np.where(u > t, u - 1, u), z_train=z_target[train],
                 z_test=z_target[test], z_target=z_target)


def _check_domains(names, where: str) -> None:
    if len(names) < 3:
        found = ", ".join(repr(str(n)) for n in names) or "none"
        raise UserError(f"{where} has {len(names)} domain(s) ({found}); causal mechanism transfer needs at least 3 "
                        "(one target and two sources to contrast): give data from more domains")


def load_gasoline(path: str | Path | None = None) -> Panel:
    """Read the Gasoline CSV (the shipped copy by default) into a standardised Panel."""
    import pandas as pd

    path = Path(path) if path else default_gasoline_csv()
    if not path.is_file():
        raise UserError(f"gasoline CSV {str(path)!r} not found; leave `csv` empty to use the copy shipped with raygen")
    try:
        df = pd.read_csv(path)
    except (pd.errors.ParserError, pd.errors.EmptyDataError, UnicodeDecodeError) as exc:
        raise UserError(f"gasoline CSV {str(path)!r} is not a readable CSV ({str(exc).strip().splitlines()[0]})") from None
    needed = (GASOLINE_DOMAIN, *GASOLINE_X, GASOLINE_Y)
    missing = [c for c in needed if c not in df.columns]
    if missing:
        raise UserError(f"gasoline CSV {str(path)!r} has no column {missing[0]!r}; it needs the columns "
                        f"{', '.join(needed)} (found {', '.join(map(str, df.columns))})")
    values = df[[*GASOLINE_X, GASOLINE_Y]].apply(pd.to_numeric, errors="coerce").to_numpy(np.float64)
    bad = ~np.isfinite(values)
    if bad.any():
        row, col = map(int, np.argwhere(bad)[0])
        raise UserError(f"gasoline CSV {str(path)!r}: column {[*GASOLINE_X, GASOLINE_Y][col]!r} has a missing or "
                        f"non-numeric value on data line {row + 1}; fix or drop that row")
    names, domain = np.unique(df[GASOLINE_DOMAIN].astype(str).to_numpy(), return_inverse=True)
    _check_domains(names, f"gasoline CSV {str(path)!r} column {GASOLINE_DOMAIN!r}")
    # YEAR is optional (only fixed splits need it); a non-integer YEAR is then as good as absent
    year = pd.to_numeric(df["YEAR"], errors="coerce").to_numpy() if "YEAR" in df.columns else None
    if year is not None and not (np.isfinite(year).all() and (year == np.round(year)).all()):
        year = None
    return Panel(z=standardise(values, [*GASOLINE_X, GASOLINE_Y], f"gasoline CSV {str(path)!r}"), domain=domain,
                 names=tuple(names), columns=(*GASOLINE_X, GASOLINE_Y),
                 year=None if year is None else year.astype(np.int64))


def standardise(values: np.ndarray, columns: list[str], where: str) -> np.ndarray:
    """Zero mean, unit variance per column; a column whose spread is zero or overflows is one UserError naming it."""
    with np.errstate(over="ignore", invalid="ignore"):  # overflow is detected below, per column
        mean, std = values.mean(0), values.std(0)
        z = (values - mean) / std
    for col, name in enumerate(columns):
        # exact test: a constant column's computed std can be round-off (1e-17), not 0
        if (values[:, col] == values[0, col]).all():
            raise UserError(f"{where}: column {name!r} is constant ({values[0, col]:g} everywhere); it carries no "
                            "information and cannot be standardised: drop or fix that column")
        if not (np.isfinite(mean[col]) and np.isfinite(std[col]) and std[col] > 0 and np.isfinite(z[:, col]).all()):
            raise UserError(f"{where}: column {name!r} has values too large to standardise in float64 (e.g. "
                            f"{values[np.argmax(np.abs(values[:, col])), col]:g}); fix or rescale that column")
    return z


def synthetic_panel(rng: np.random.Generator, *, n_sources: int, source_size: int, target_size: int) -> Panel:
    """K source domains of `source_size` rows and one domain "target" of `target_size` rows from the known f."""
    mechanism, dim = Mechanism(), 4
    names = tuple(f"source{k + 1}" for k in range(n_sources)) + ("target",)
    sizes = [source_size] * n_sources + [target_size]
    zs, domain = [], []
    for k, size in enumerate(sizes):
        mu, sigma = rng.uniform(-1, 1, dim), rng.uniform(0.3, 1.5, dim)
        s = mu + sigma * rng.laplace(0.0, 1 / np.sqrt(2), (size, dim))
        zs.append(mechanism.f(s))
        domain.append(np.full(size, k))
    _check_domains(names, "the synthetic benchmark")
    return Panel(z=np.concatenate(zs), domain=np.concatenate(domain), names=names,
                 columns=tuple(f"X{d + 1}" for d in range(dim - 1)) + ("Y",), mechanism=mechanism)


def split_target(panel: Panel, target: str, n: int, rng: np.random.Generator) -> Split:
    """Hold out `target`; n of its rows (drawn by `rng`) train, the rest test; every other domain is a source."""
    t = _target_index(panel, target)
    size = int((panel.domain == t).sum())
    if size < n + 1:
        raise UserError(f"target {target!r} has {size} points, fewer than n_train={n} training points plus "
                        "at least one test point; lower n_train")
    perm = rng.permutation(size)
    return _hold_out(panel, t, perm[:n], perm[n:])
