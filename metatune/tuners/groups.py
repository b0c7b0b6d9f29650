"""Per-group search spaces: an η and a β for each parameter group, named by prefix.

A scalar space has one (η, β) for every parameter. A space over groups g₁ … g_G
(parameter-name prefixes, as :func:`metatune.unroll` takes them) has 2G hyperparameters,
a :class:`~metatune.point.Point` with one (η_g, β_g) per group. Each group's (η_g, β_g)
lies in the same box (the space's bounds).
"""

from __future__ import annotations

from collections.abc import Sequence

from metatune._types import Params
from metatune.dynamics import group_hyperparameter
from metatune.errors import InvalidArgumentError, invalid
from metatune.point import Point

GROUPINGS = ("layers", "tensors")


def resolve_groups(groups: str | Sequence[str] | None, params: Params) -> tuple[str, ...]:
    """The prefixes of ``groups`` for ``params``: () for None (a scalar space); "layers": one
    group per module (each name up to its last dot); "tensors": one per parameter tensor;
    or the given prefixes, which must cover every parameter and each match one.

    Example:
        >>> import torch
        >>> p = {"0.weight": torch.ones(1), "0.bias": torch.ones(1), "2.weight": torch.ones(1)}
        >>> resolve_groups("layers", p), resolve_groups(None, p)
        (('0', '2'), ())
    """
    if groups is None:
        return ()
    if isinstance(groups, str):
        if groups not in GROUPINGS:
            raise invalid("groups", groups, f"None, one of {GROUPINGS}, or a list of parameter-name prefixes")
        names = list(params) if groups == "tensors" else [n.rsplit(".", 1)[0] for n in params]
        return tuple(dict.fromkeys(names))
    prefixes = tuple(groups)
    if not prefixes or not all(isinstance(p, str) for p in prefixes) or len(set(prefixes)) != len(prefixes):
        raise invalid("groups", groups, "distinct parameter-name prefixes (strings)")
    like = next(iter(params.values()))
    try:  # the prefixes cover every parameter and each matches one
        group_hyperparameter(dict.fromkeys(prefixes, 1.0), params, name="groups", like=like)
    except InvalidArgumentError as error:  # shown with the value as given, not the probe dict
        raise invalid("groups", groups, str(error).partition(" is invalid: expected ")[2]) from None
    return prefixes


def largest_spectral_radius(point: Point, eigenvalues: Sequence[float]) -> float:
    """ρ over ``eigenvalues`` at (η, β), or the largest of the groups' ρ at their (η_g, β_g):
    exact when the top mode lies in one group's parameters, a bound of that form otherwise."""
    from metatune.stability import spectral_radius

    return max(float(spectral_radius(lr, momentum, list(eigenvalues))) for lr, momentum in point.pairs())
