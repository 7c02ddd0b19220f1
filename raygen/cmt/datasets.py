"""Multi-domain tabular data Z = (X, Y) for causal mechanism transfer, and the few-shot target split.

Two sources:
- the Gasoline panel (Baltagi & Griffin 1983; shipped as raygen/cmt/data/gasoline.csv): each country is
  a domain; Z = (LINCOMEP, LRPMG, LCARPCAP, LGASPCAR), Y = LGASPCAR last, YEAR dropped; every column
  standardised over the whole panel (as the paper's reference code does).
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
    return Panel(z=standardise(values, [*GASOLINE_X, GASOLINE_Y], f"gasoline CSV {str(path)!r}"), domain=domain,
                 names=tuple(names), columns=(*GASOLINE_X, GASOLINE_Y))


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
    if target not in panel.names:
        raise UserError(f"unknown target domain {target!r}; valid: {', '.join(panel.names)}")
    z_target = panel.rows_of(target)
    if len(z_target) < n + 1:
        raise UserError(f"target {target!r} has {len(z_target)} points, fewer than n_train={n} training points plus "
                        "at least one test point; lower n_train")
    t = panel.names.index(target)
    source = panel.domain != t
    u = panel.domain[source]
    perm = rng.permutation(len(z_target))
    return Split(z_source=panel.z[source], u_source=np.where(u > t, u - 1, u), z_train=z_target[perm[:n]],
                 z_test=z_target[perm[n:]], z_target=z_target)
