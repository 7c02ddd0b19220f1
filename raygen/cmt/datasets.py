"""Multi-domain tabular data Z = (X, Y) for causal mechanism transfer, and the few-shot target split.

Two sources:
- the Gasoline panel (Baltagi & Griffin 1983; shipped as raygen/cmt/data/gasoline.csv): each country is
  a domain; Z = (LINCOMEP, LRPMG, LCARPCAP, LGASPCAR), Y = LGASPCAR last, YEAR dropped; every column
  standardised over the whole panel (as the paper's reference code does).
- a synthetic benchmark with a known mechanism f(s) = A₂·asinh(2·A₁s) (A₁, A₂ random orthogonal,
  so f⁻¹(z) = A₁ᵀ·sinh(A₂ᵀz)/2 in closed form), D = 4; in domain k component d is
  s_d = μ_kd + σ_kd·ε with ε ~ Laplace of unit variance, μ_kd ~ U(−1, 1), σ_kd ~ U(0.3, 1.5).
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
    """The synthetic benchmark's true f and f⁻¹."""

    a1: np.ndarray
    a2: np.ndarray

    def f(self, s: np.ndarray) -> np.ndarray:
        return np.arcsinh(2.0 * s @ self.a1.T) @ self.a2.T

    def f_inv(self, z: np.ndarray) -> np.ndarray:
        return np.sinh(z @ self.a2) / 2.0 @ self.a1


@dataclasses.dataclass(frozen=True)
class Panel:
    z: np.ndarray  # [N, D] rows, Y in the last column
    domain: np.ndarray  # [N] index into names
    names: tuple[str, ...]
    columns: tuple[str, ...]
    mechanism: Mechanism | None = None  # known only for synthetic data

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
    z = (values - values.mean(0)) / values.std(0)
    return Panel(z=z, domain=domain, names=tuple(names), columns=(*GASOLINE_X, GASOLINE_Y))


def synthetic_panel(seed: int, *, n_sources: int, source_size: int, target_size: int, dim: int = 4) -> Panel:
    """K source domains of `source_size` rows and one domain "target" of `target_size` rows from a known f."""
    rng = np.random.default_rng([seed, 4])
    a1, a2 = (np.linalg.qr(rng.standard_normal((dim, dim)))[0] for _ in range(2))
    mechanism = Mechanism(a1, a2)
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


def split_target(panel: Panel, target: str, n: int, seed) -> Split:
    """Hold out `target`; n of its rows (drawn by `seed`) train, the rest test; every other domain is a source."""
    if target not in panel.names:
        raise UserError(f"unknown target domain {target!r}; valid: {', '.join(panel.names)}")
    z_target = panel.rows_of(target)
    if len(z_target) < n + 1:
        raise UserError(f"target {target!r} has {len(z_target)} points, fewer than n_train={n} training points plus "
                        "at least one test point; lower n_train")
    t = panel.names.index(target)
    source = panel.domain != t
    u = panel.domain[source]
    perm = np.random.default_rng(seed).permutation(len(z_target))
    return Split(z_source=panel.z[source], u_source=np.where(u > t, u - 1, u), z_train=z_target[perm[:n]],
                 z_test=z_target[perm[n:]], z_target=z_target)
