"""Your own bilevel problem in `raygen tune` (jobs/tune_own_problem.yaml): tune a ridge penalty λ.

inner: θ*(λ) = argmin_θ ½‖Xθ − y‖²/n + ½λ‖θ‖²   outer: ½‖X_val θ*(λ) − y_val‖²/n_val

`raygen tune` calls make_problem(data, init, device, **task_options): `data` and `init` are
torch.Generators from the run seed (draw everything from them, never the global RNG) and `device`
is where the trial computes. The protocol is documented in raygen.hypergrad.problem.
"""

import torch
from torch.utils.data import DataLoader, TensorDataset

from raygen.hypergrad import BilevelProblem, GlobalHparam


def make_problem(data, init, device, n=200, d=20, noise=1.0, batch_size=0, lam=1.0):
    f64 = dict(dtype=torch.float64)
    w_true = torch.randn(d, generator=data, **f64)

    def draw(m):
        x = torch.randn(m, d, generator=data, **f64)
        return x.to(device), (x @ w_true + noise * torch.randn(m, generator=data, **f64)).to(device)

    train, val, test = draw(n), draw(n), draw(n)

    def inner_loss(theta, phi, batch):
        x, y = batch
        return ((x @ theta[0] - y) ** 2).mean() / 2 + phi[0] / 2 * (theta[0] ** 2).sum()

    def outer_loss(theta, phi, batch):
        x, y = batch
        return ((x @ theta[0] - y) ** 2).mean() / 2

    # full batch by default; batch_size > 0: shuffled minibatches, reshuffled each pass from `data`
    inner_data = [train] if not batch_size else DataLoader(TensorDataset(*train), batch_size=batch_size,
                                                           shuffle=True, generator=data)
    return BilevelProblem(
        params=(torch.zeros(d, device=device, **f64),),
        hparams=(torch.tensor(lam, device=device, **f64),),  # φ₀ = λ₀ ...
        bounds=[(0.0, None)],  # ... kept positive: the outer optimiser moves u = log λ
        inner_loss=inner_loss,
        outer_loss=outer_loss,
        inner_data=inner_data,
        outer_data=[val],
        evaluate=lambda theta, phi: {"val_loss": float(outer_loss(theta, phi, val)),
                                     "test_loss": float(outer_loss(theta, phi, test))},
        # the black-box baselines search λ itself; to_raw gives the raw u = log λ
        global_hparam=GlobalHparam("lambda", 1e-3, 10.0, log=True,
                                   to_raw=lambda v: (torch.log(torch.tensor(v, device=device, **f64)),)),
        name="ridge",
        info={"n": n, "d": d, "batch_size": batch_size},
    )
