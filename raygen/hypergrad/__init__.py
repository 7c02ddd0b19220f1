"""Hypergradients by implicit differentiation (Nyström, CG, Neumann, exact) and bilevel HPO.

Pure torch: nothing here imports Ray (the Tune adapter is `raygen.workloads.tune`).
"""

from raygen.hypergrad.bilevel import BilevelOptimizer, Task
from raygen.hypergrad.hypergradient import functional_module, hypergradient
from raygen.hypergrad.solvers import SOLVERS, SolverDivergence, cg_ihvp, exact_ihvp, neumann_ihvp, nystrom_ihvp

__all__ = [
    "BilevelOptimizer",
    "Task",
    "functional_module",
    "hypergradient",
    "SOLVERS",
    "SolverDivergence",
    "cg_ihvp",
    "exact_ihvp",
    "neumann_ihvp",
    "nystrom_ihvp",
]
