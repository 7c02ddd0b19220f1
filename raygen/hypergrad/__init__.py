"""Hypergradients by implicit differentiation (column and randomized Nyström, Nyström-PCG, CG, the reference library's CG, Neumann, exact) and bilevel HPO
on any `BilevelProblem` (`raygen.hypergrad.problem` documents the protocol).

Pure torch: nothing here imports Ray (the Tune adapter is `raygen.workloads.tune`).
"""

from raygen.hypergrad.bilevel import BilevelOptimizer
from raygen.hypergrad.hypergradient import SOLVERS, functional_module, hypergradient
from raygen.hypergrad.problem import BilevelProblem, GlobalHparam
from raygen.hypergrad.sketch import NystromSketch, nystrom_pcg_ihvp, nystrom_sketch, randomized_nystrom_ihvp
from raygen.hypergrad.solvers import (
    SolverDivergence,
    cg_ihvp,
    exact_ihvp,
    lambda_max,
    neumann_ihvp,
    nystrom_ihvp,
    reference_cg_ihvp,
)

__all__ = [
    "BilevelOptimizer",
    "BilevelProblem",
    "GlobalHparam",
    "functional_module",
    "hypergradient",
    "SOLVERS",
    "SolverDivergence",
    "cg_ihvp",
    "reference_cg_ihvp",
    "lambda_max",
    "exact_ihvp",
    "neumann_ihvp",
    "nystrom_ihvp",
    "NystromSketch",
    "nystrom_sketch",
    "randomized_nystrom_ihvp",
    "nystrom_pcg_ihvp",
]
