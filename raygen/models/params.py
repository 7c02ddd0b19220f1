"""Parameter vectors <-> modules, and batched evaluation of many parameter vectors at once.

One home for flat parameter vectors: `pack` / `unpack` (tensors <-> one vector, gradients flow:
the hypergradient's theta) and, on top of them, `ParamLayout` with `flatten` / `unflatten` (named
tensors of a module <-> theta, batched over leading dimensions: weight generation's zoos).

A zoo stores each member as one flat float32 vector theta of the *generated* parameters (all of a
network's parameters, or a subset such as the head or the normalisation layers as in p-diff);
`ParamLayout` records which tensors, in which order and shape, make up theta. The network is
evaluated at theta with `torch.func.functional_call(module, {**base, **unflatten(theta)}, x)`,
where `base` holds every other parameter and buffer (fixed), so no module is built per sample;
`vmap` over theta evaluates a whole stack [N, P] in one call.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Mapping, Sequence

import torch
from torch import nn

from raygen.errors import UserError


@dataclasses.dataclass(frozen=True)
class ParamLayout:
    """Names and shapes of the tensors packed (in this order) into a flat parameter vector."""

    names: tuple[str, ...]
    shapes: tuple[tuple[int, ...], ...]

    @classmethod
    def of(cls, module: nn.Module, names: Sequence[str] | None = None) -> "ParamLayout":
        """The layout of `names` (default: all parameters) in the module's registration order."""
        params = dict(module.named_parameters())
        chosen = list(params) if names is None else [n for n in params if n in set(names)]
        unknown = sorted(set(names or ()) - set(params))
        if unknown:
            raise UserError(f"parameters {unknown} do not exist in the network; known: {', '.join(params)}")
        if not chosen:
            raise UserError("the parameter subset is empty; choose at least one parameter tensor")
        return cls(tuple(chosen), tuple(tuple(params[n].shape) for n in chosen))

    @property
    def sizes(self) -> list[int]:
        return [math.prod(s) for s in self.shapes]

    @property
    def numel(self) -> int:
        return sum(self.sizes)

    def to_dict(self) -> dict:
        return {"names": list(self.names), "shapes": [list(s) for s in self.shapes]}

    @classmethod
    def from_dict(cls, d: Mapping) -> "ParamLayout":
        return cls(tuple(d["names"]), tuple(tuple(s) for s in d["shapes"]))

    def tensor_index(self) -> torch.Tensor:
        """For each entry of theta, the index of the tensor it belongs to ([P], long)."""
        return torch.repeat_interleave(torch.arange(len(self.names)), torch.tensor(self.sizes))

    def check_matches(self, other: "ParamLayout", where: str) -> None:
        """A UserError naming the first difference when `other` is not this layout."""
        if other == self:
            return
        mine, theirs = dict(zip(self.names, self.shapes)), dict(zip(other.names, other.shapes))
        diff = next((n for n in list(mine) + list(theirs) if mine.get(n) != theirs.get(n)), None)
        detail = (f"tensor {diff!r} is {theirs.get(diff)} there but {mine.get(diff)} in the target architecture"
                  if diff is not None else "the tensors are in a different order")
        raise UserError(f"{where}: parameter layout does not match the target architecture ({detail}); "
                        "use a checkpoint written for this architecture and parameter subset")


def pack(tensors: Sequence[torch.Tensor]) -> torch.Tensor:
    """One vector: the tensors flattened row-major and concatenated ([P]); differentiable."""
    return torch.cat([t.reshape(-1) for t in tensors])


def unpack(flat: torch.Tensor, shapes: Sequence[Sequence[int]]) -> tuple[torch.Tensor, ...]:
    """The inverse of `pack`: flat [..., P] -> tensors [..., *shape] (views where possible)."""
    lead, sizes = flat.shape[:-1], [math.prod(s) for s in shapes]
    return tuple(t.reshape((*lead, *s)) for s, t in zip(shapes, flat.split(sizes, -1)))


def flatten(params: Mapping[str, torch.Tensor], layout: ParamLayout) -> torch.Tensor:
    """theta = the layout's tensors packed in its order, detached ([P])."""
    return pack([params[n] for n in layout.names]).detach()


def unflatten(theta: torch.Tensor, layout: ParamLayout) -> dict[str, torch.Tensor]:
    """The inverse of `flatten`: theta [..., P] -> {name: tensor [..., *shape]} (views, no copy)."""
    if theta.shape[-1] != layout.numel:
        raise UserError(f"parameter vector has {theta.shape[-1]} entries but the layout needs {layout.numel}")
    return dict(zip(layout.names, unpack(theta, layout.shapes)))


def base_state(module: nn.Module) -> dict[str, torch.Tensor]:
    """Every parameter and buffer of the module, detached: the fixed part of a functional call."""
    return {k: v.detach() for k, v in {**dict(module.named_parameters()), **dict(module.named_buffers())}.items()}


def functional_logits(module: nn.Module, base: Mapping[str, torch.Tensor], layout: ParamLayout,
                      theta: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
    """module(x) with the layout's tensors taken from theta [P] and the rest from `base`."""
    return torch.func.functional_call(module, {**base, **unflatten(theta, layout)}, (x,))


def batched_logits(module: nn.Module, base: Mapping[str, torch.Tensor], layout: ParamLayout,
                   thetas: torch.Tensor, x: torch.Tensor, chunk: int = 32) -> torch.Tensor:
    """Logits of every model in thetas [N, P] on the same inputs x: [N, B, classes].

    vmap over theta; models are processed `chunk` at a time to bound activation memory.
    The module must be in eval mode (batch norm then uses its stored statistics)."""
    if module.training:
        raise ValueError("batched evaluation needs module.eval() (batch norm must not use batch statistics)")
    fn = torch.func.vmap(lambda th: functional_logits(module, base, layout, th, x))
    with torch.no_grad():
        return torch.cat([fn(thetas[i:i + chunk]) for i in range(0, len(thetas), chunk)])


def batched_predictions(module: nn.Module, base: Mapping[str, torch.Tensor], layout: ParamLayout,
                        thetas: torch.Tensor, x: torch.Tensor, chunk: int = 32) -> torch.Tensor:
    """Predicted labels [N, B] of every model in thetas."""
    return batched_logits(module, base, layout, thetas, x, chunk).argmax(-1)


def batched_accuracy(module: nn.Module, base: Mapping[str, torch.Tensor], layout: ParamLayout,
                     thetas: torch.Tensor, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """Accuracy in [0, 1] of every model in thetas on (x, y): [N] float64."""
    return (batched_predictions(module, base, layout, thetas, x) == y).double().mean(1)
