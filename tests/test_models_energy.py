"""EnergyModel: score, Hessian-vector products and Hessians by autograd vs finite differences."""

import torch
from torch import nn

from raygen.models.energy import EnergyModel

F64 = torch.float64


class SmallEnergyNet(nn.Module):
    """A smooth non-quadratic energy: MLP(x, sigma) -> [B] plus a confining |x|^2 term."""

    def __init__(self, d: int):
        super().__init__()
        g = torch.Generator().manual_seed(0)
        self.W1 = nn.Parameter(torch.randn(d + 1, 16, generator=g, dtype=F64))
        self.w2 = nn.Parameter(torch.randn(16, generator=g, dtype=F64))

    def forward(self, x, sigma):
        flat = x.reshape(len(x), -1)
        h = torch.tanh(torch.cat([flat, torch.full_like(flat[:, :1], sigma)], 1) @ self.W1)
        return h @ self.w2 + 0.5 * (flat**2).sum(1)


def test_score_hvp_hessian_match_finite_differences():
    d, sigma, h = 3, 0.3, 1e-5
    model = EnergyModel(SmallEnergyNet(d))
    x = torch.randn(5, d, generator=torch.Generator().manual_seed(1), dtype=F64)
    v = torch.randn(5, d, generator=torch.Generator().manual_seed(2), dtype=F64)
    H = model.hessian(x, sigma)
    torch.testing.assert_close(H, H.transpose(1, 2), rtol=0, atol=0)
    for j in range(d):
        e = torch.zeros(d, dtype=F64)
        e[j] = h
        fd = -(model.energy(x + e, sigma) - model.energy(x - e, sigma)) / (2 * h)
        torch.testing.assert_close(model.score(x, sigma)[:, j], fd, rtol=1e-7, atol=1e-8)
        fd_col = (model.score(x + e, sigma) - model.score(x - e, sigma)) / (2 * h)
        torch.testing.assert_close(H[:, :, j], fd_col, rtol=1e-7, atol=1e-8)
    fd_hvp = (model.score(x + h * v, sigma) - model.score(x - h * v, sigma)) / (2 * h)
    torch.testing.assert_close(model.hvp(x, sigma, v), fd_hvp, rtol=1e-7, atol=1e-8)


def test_quadratic_energy_gives_exact_hessian_for_image_shaped_x():
    """E = x^T A x / 2 on x of shape [B, 2, 2]: Hessian of log q~ is exactly -A (sym.)."""
    A = torch.randn(4, 4, generator=torch.Generator().manual_seed(3), dtype=F64)
    A = A @ A.T + torch.eye(4, dtype=F64)

    class Quadratic(nn.Module):
        def forward(self, x, sigma):
            flat = x.reshape(len(x), -1)
            return 0.5 * ((flat @ A) * flat).sum(1)

    model = EnergyModel(Quadratic())
    x = torch.randn(3, 2, 2, generator=torch.Generator().manual_seed(4), dtype=F64)
    torch.testing.assert_close(model.hessian(x, 0.1), (-A).expand(3, 4, 4), rtol=0, atol=1e-12)
    torch.testing.assert_close(model.score(x, 0.1), -(x.reshape(3, 4) @ A).reshape(3, 2, 2), rtol=0, atol=1e-12)
    assert not x.requires_grad and model.score(x, 0.1).requires_grad is False


def test_models_do_not_import_the_samplers():
    """Models sit below the algorithms: importing raygen.models (all its modules) loads nothing of raygen.sampling
    or raygen.metrics (which imports raygen.models: the loop models -> sampling -> metrics -> models). A fresh
    interpreter, because other tests have imported the samplers into this one."""
    import subprocess
    import sys
    from pathlib import Path

    import raygen.models

    names = [f"raygen.models.{f.stem}" for f in Path(raygen.models.__path__[0]).glob("*.py") if f.stem != "__init__"]
    assert "raygen.models.energy" in names and "raygen.models.denoiser" in names
    code = f"import importlib, sys\nfor n in {names!r}: importlib.import_module(n)\n" \
           "print(sorted(m for m in sys.modules if m.startswith(('raygen.sampling', 'raygen.metrics'))))"
    loaded = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert loaded.strip() == "[]"
