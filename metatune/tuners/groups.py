"""Per-group search spaces: an η and a β for each parameter group, named by prefix.

A scalar space has one (η, β) for every parameter; a point's ``lr`` and ``momentum`` are
floats. A space over groups g₁ … g_G (parameter-name prefixes, as
:func:`metatune.unroll` takes them) has 2G hyperparameters; a point's ``lr`` and
``momentum`` are dicts ``{prefix: value}``, which the engine takes as they are. Each
group's (η_g, β_g) lies in the same box (the space's bounds).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Union

from metatune._types import Params
from metatune.dynamics import group_hyperparameter
from metatune.errors import InvalidArgumentError, invalid

Hyper = Union[float, dict[str, float]]
"""A point's η or β: one float, or one per group keyed by prefix."""

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


def values_of(value: Hyper, groups: tuple[str, ...]) -> list[float]:
    """A point's η or β as one float per group, in ``groups`` order (one float when scalar)."""
    if not groups:
        return [float(value)]  # type: ignore[arg-type]
    return [float(value[g]) for g in groups]  # type: ignore[index]


def hyper_of(values: Sequence[float], groups: tuple[str, ...]) -> Hyper:
    """Inverse of :func:`values_of`."""
    if not groups:
        return float(values[0])
    return {g: float(v) for g, v in zip(groups, values)}


def flat_point(lr: Hyper, momentum: Hyper) -> dict[str, float]:
    """{"lr", "momentum"}, or {"lr[g]", "momentum[g]"} per group: the flat names Optuna's
    distributions and Ray's results use (Ray flattens nested results)."""
    if isinstance(lr, Mapping):
        return {**{f"lr[{g}]": float(v) for g, v in lr.items()},
                **{f"momentum[{g}]": float(v) for g, v in momentum.items()}}  # type: ignore[union-attr]
    return {"lr": float(lr), "momentum": float(momentum)}  # type: ignore[arg-type]


def point_from_flat(values: Mapping[str, float], groups: tuple[str, ...]) -> tuple[Hyper, Hyper]:
    """Inverse of :func:`flat_point`."""
    if not groups:
        return float(values["lr"]), float(values["momentum"])
    return ({g: float(values[f"lr[{g}]"]) for g in groups}, {g: float(values[f"momentum[{g}]"]) for g in groups})


def largest_spectral_radius(lr: Hyper, momentum: Hyper, eigenvalues: Sequence[float],
                            groups: tuple[str, ...]) -> float:
    """ρ over ``eigenvalues`` at (η, β), or the largest of the groups' ρ at their (η_g, β_g):
    exact when the top mode lies in one group's parameters, a bound of that form otherwise."""
    from metatune.stability import spectral_radius

    pairs = zip(values_of(lr, groups), values_of(momentum, groups))
    return max(float(spectral_radius(g_lr, g_momentum, list(eigenvalues))) for g_lr, g_momentum in pairs)


def plain(value: Hyper) -> Hyper:
    """A float, or a dict of floats by group (numpy scalars and tensors made Python floats)."""
    return {g: float(v) for g, v in value.items()} if isinstance(value, Mapping) else float(value)


def point_key(lr: Hyper, momentum: Hyper) -> tuple:
    """A hashable key for the point (lr, momentum), scalar or per group."""
    return (_frozen(lr), _frozen(momentum))


def _frozen(value: Hyper) -> object:
    return tuple(sorted(value.items())) if isinstance(value, Mapping) else float(value)

