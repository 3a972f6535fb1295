"""Feature maps φ for the kernels of ALWS, and the input checks shared by the kernels package."""

from __future__ import annotations

from collections.abc import Sequence

from torch import Tensor, nn


class IdentityFeatures(nn.Module):
    """φ(x) = x. ``dim`` (optional) is the input width, needed only by random Fourier features
    when they are to be drawn at construction rather than at first use.

    Shapes: x [N, D] -> [N, D].
    """

    def __init__(self, dim: int | None = None):
        super().__init__()
        self.out_dim = dim

    def forward(self, x: Tensor) -> Tensor:
        return x


def _check_dim(name: str, value: int) -> None:
    if not isinstance(value, int) or value < 1:
        raise ValueError(f"{name} must be a positive integer, got {value!r}")


class LinearFeatures(nn.Module):
    """Learned linear features φ(x) = W x (no bias: the kernels are translation invariant),
    optionally followed by batch norm, as in the ALWS paper's kernels.

    Shapes: x [N, in_dim] -> [N, out_dim]. Raises ``ValueError`` for non-positive sizes.
    """

    def __init__(self, in_dim: int, out_dim: int, batch_norm: bool = False):
        super().__init__()
        _check_dim("in_dim", in_dim)
        _check_dim("out_dim", out_dim)
        self.out_dim = out_dim
        self.linear = nn.Linear(in_dim, out_dim, bias=False)
        self.norm = nn.BatchNorm1d(out_dim) if batch_norm else nn.Identity()

    def forward(self, x: Tensor) -> Tensor:
        return self.norm(self.linear(x))


class MLPFeatures(nn.Module):
    """Small learned network φ(x) = MLP(x) whose outputs the kernel compares.

    Args:
        in_dim: input width D.
        hidden: widths of the hidden layers (may be empty: then a single linear layer).
        out_dim: feature width.
        batch_norm: insert ``BatchNorm1d`` after every hidden linear layer.
        activation: module class for the nonlinearity (default ``nn.SiLU``).

    Shapes: x [N, in_dim] -> [N, out_dim]. Raises ``ValueError`` for non-positive sizes.
    With batch norm in training mode the statistics are those of the batch passed in; the kernels
    pass sleep and wake/query inputs through together (see ``StationaryKernel.featurize``).
    """

    def __init__(
        self,
        in_dim: int,
        hidden: Sequence[int] = (64,),
        out_dim: int = 16,
        batch_norm: bool = False,
        activation: type[nn.Module] = nn.SiLU,
    ):
        super().__init__()
        _check_dim("in_dim", in_dim)
        _check_dim("out_dim", out_dim)
        for h in hidden:
            _check_dim("hidden width", h)
        self.out_dim = out_dim
        layers: list[nn.Module] = []
        width = in_dim
        for h in hidden:
            layers.append(nn.Linear(width, h))
            if batch_norm:
                layers.append(nn.BatchNorm1d(h))
            layers.append(activation())
            width = h
        layers.append(nn.Linear(width, out_dim))
        self.net = nn.Sequential(*layers)

    def forward(self, x: Tensor) -> Tensor:
        return self.net(x)


def _as_2d(name: str, x: Tensor) -> Tensor:
    if not isinstance(x, Tensor):
        raise TypeError(f"{name} must be a torch.Tensor, got {type(x).__name__}")
    if x.dim() != 2:
        raise ValueError(f"{name} must have shape [num_points, dim], got {tuple(x.shape)}")
    if x.shape[0] == 0:
        raise ValueError(f"{name} is empty (0 points)")
    return x
