"""Argument checks: the one place the library says what a valid argument is.

Every function takes the argument's ``name`` and ``value`` and returns the value
normalised (a Python ``int``, ``float`` or ``bool``), or raises
:class:`~metatune.errors.InvalidArgumentError` (a ``ValueError``) whose message names the
argument, the value and the valid range, e.g. ``steps=0 is invalid: expected an integer >= 1``.
Booleans are never numbers here (``steps=True`` is refused), and a number is never a flag
(``guard="no"`` is refused).

Example:
    >>> positive_int("steps", 5), learning_rate("lr", 0.1), flag("nesterov", False)
    (5, 0.1, False)
    >>> momentum("momentum", 1.0)
    Traceback (most recent call last):
    ...
    metatune.errors.InvalidArgumentError: momentum=1.0 is invalid: expected a momentum in [0, 1)
"""

from __future__ import annotations

import inspect
import numbers
from collections.abc import Collection, Iterable, Mapping
from dataclasses import dataclass
from typing import Any, TypeVar

import numpy as np
import torch
from torch import Tensor

from metatune.errors import invalid

T = TypeVar("T")


def _with_note(expected: str, note: str) -> str:
    return f"{expected} ({note})" if note else expected


def _real(value: Any) -> float | None:
    """``value`` as a float when it is one real number (a one-element tensor too), else None."""
    if isinstance(value, Tensor):
        if value.numel() != 1 or value.dtype.is_complex or value.dtype == torch.bool:
            return None
        return float(value.detach().reshape(()))
    if isinstance(value, (bool, np.bool_)) or not isinstance(value, numbers.Real):
        return None
    return float(value)


@dataclass(frozen=True)
class Interval:
    """A range of real numbers: ``low`` and ``high`` (None: unbounded), each open or closed.

    ``finite`` refuses ±inf even where the bounds allow it; NaN is never inside.
    """

    low: float | None = None
    high: float | None = None
    low_open: bool = False
    high_open: bool = False
    finite: bool = True
    what: str = "a number"

    def describe(self) -> str:
        """The range in words, e.g. ``a number in [0, 1)`` or ``a finite number > 0``."""
        what = self.what
        if self.finite and (self.low is None or self.high is None) and "finite" not in what:
            what = "a finite " + what.removeprefix("a ")  # inf would otherwise look allowed
        if self.low is not None and self.high is not None:
            left, right = "(" if self.low_open else "[", ")" if self.high_open else "]"
            return f"{what} in {left}{self.low:g}, {self.high:g}{right}"
        if self.low is not None:
            return f"{what} {'>' if self.low_open else '>='} {self.low:g}"
        if self.high is not None:
            return f"{what} {'<' if self.high_open else '<='} {self.high:g}"
        return what

    def contains(self, x: np.ndarray | float) -> np.ndarray | bool:
        """Elementwise membership (vectorised over numpy arrays)."""
        with np.errstate(invalid="ignore"):
            ok = ~np.isnan(x) if not self.finite else np.isfinite(x)
            if self.low is not None:
                ok = ok & ((x > self.low) if self.low_open else (x >= self.low))
            if self.high is not None:
                ok = ok & ((x < self.high) if self.high_open else (x <= self.high))
        return ok

    def check(self, name: str, value: Any, note: str = "") -> float:
        """``value`` as a float inside the interval, else :func:`~metatune.errors.invalid`."""
        number = _real(value)
        if number is None or not bool(self.contains(number)):
            raise invalid(name, value, _with_note(self.describe(), note))
        return number

    def check_all(self, name: str, values: np.ndarray) -> np.ndarray:
        """Every element of ``values`` inside the interval; the first outside is named ``name[i]``."""
        bad = ~np.asarray(self.contains(values), dtype=bool)
        if bad.any():
            index = tuple(int(i) for i in np.argwhere(bad)[0])
            label = name if not index else f"{name}[{', '.join(map(str, index))}]"
            raise invalid(label, float(values[index]), self.describe())
        return values


LEARNING_RATE = Interval(low=0.0, low_open=True, what="a finite learning rate")
"""η: finite and > 0."""

MOMENTUM = Interval(low=0.0, high=1.0, high_open=True, what="a momentum")
"""β: in [0, 1) (β = 1 never forgets a gradient; β < 0 flips its sign)."""


def learning_rate(name: str, value: Any) -> float:
    """A learning rate η: one finite number > 0 (a Python number or a one-element tensor)."""
    return LEARNING_RATE.check(name, value)


def momentum(name: str, value: Any) -> float:
    """A momentum β in [0, 1) (a Python number or a one-element tensor)."""
    return MOMENTUM.check(name, value)


def number(name: str, value: Any, *, low: float | None = None, high: float | None = None,
           low_open: bool = False, high_open: bool = False, finite: bool = True, note: str = "") -> float:
    """A real number in the interval given by ``low``/``high`` (open where said); finite unless
    ``finite=False``.

    Example:
        >>> number("margin", 0.5, low=0.0, high=1.0, high_open=True)
        0.5
    """
    return Interval(low, high, low_open, high_open, finite).check(name, value, note)


def positive(name: str, value: Any, note: str = "") -> float:
    """A finite number > 0."""
    return number(name, value, low=0.0, low_open=True, note=note)


def non_negative(name: str, value: Any, note: str = "") -> float:
    """A finite number >= 0."""
    return number(name, value, low=0.0, note=note)


def fraction(name: str, value: Any, note: str = "") -> float:
    """A number in [0, 1)."""
    return number(name, value, low=0.0, high=1.0, high_open=True, note=note)


def integer(name: str, value: Any, *, low: int | None = None, high: int | None = None,
            optional: bool = False, note: str = "") -> Any:
    """An integer (``bool`` refused, ``1.0`` and ``1.7`` refused) in [low, high]; None too
    when ``optional``. Returns a Python ``int`` (or None).

    Example:
        >>> integer("seed", 3), integer("chunk_size", None, low=1, optional=True)
        (3, None)
    """
    if optional and value is None:
        return None
    ok = isinstance(value, numbers.Integral) and not isinstance(value, (bool, np.bool_))
    ok = ok and (low is None or value >= low) and (high is None or value <= high)
    if not ok:
        if low is not None and high is not None:
            expected = f"an integer in [{low}, {high}]"
        else:
            bound = f" >= {low}" if low is not None else f" <= {high}" if high is not None else ""
            expected = "an integer" + bound
        raise invalid(name, value, _with_note(("None or " if optional else "") + expected, note))
    return int(value)


def positive_int(name: str, value: Any, *, optional: bool = False, note: str = "") -> Any:
    """An integer >= 1 (None too when ``optional``)."""
    return integer(name, value, low=1, optional=optional, note=note)


def flag(name: str, value: Any, *, also: Collection[str] = ()) -> bool | str:
    """``True`` or ``False`` and nothing else (not 0, 1, "no" or None), or one of the words ``also``
    (e.g. ``"auto"``).

    Example:
        >>> flag("guard", "auto", also=("auto",))
        'auto'
    """
    if isinstance(value, str) and value in also:
        return value
    if not isinstance(value, (bool, np.bool_)):
        words = ["True", "False", *map(repr, also)]
        raise invalid(name, value, ", ".join(words[:-1]) + " or " + words[-1])
    return bool(value)


def choice(name: str, value: T, options: Collection[Any], note: str = "") -> T:
    """One of ``options`` (compared by equality; unhashable values are refused, not raised on)."""
    try:
        ok = value in options
    except TypeError:
        ok = False
    if not ok:
        raise invalid(name, value, _with_note(f"one of {list(options)}", note))
    return value


def instance(name: str, value: T, kind: type | tuple[type, ...], expected: str, *,
             optional: bool = False) -> T:
    """An instance of ``kind`` (None too when ``optional``); ``expected`` says what that is."""
    if not (optional and value is None) and not isinstance(value, kind):
        raise invalid(name, value, ("None or " if optional else "") + expected)
    return value


def function(name: str, value: T, expected: str, *, optional: bool = False) -> T:
    """A callable (None too when ``optional``); ``expected`` says with which arguments."""
    if not (optional and value is None) and not callable(value):
        raise invalid(name, value, ("None or " if optional else "") + expected)
    return value


def keywords(owner: str, given: Mapping[str, Any], accepted: Iterable[str]) -> None:
    """Every key of ``given`` among ``accepted``; the first that is not is named with its value.

    Example:
        >>> try:
        ...     keywords("online", {"mode": "reverse"}, ["horizon"])
        ... except ValueError as error:
        ...     print(error)
        mode='reverse' is invalid: expected a keyword argument of online, one of ['horizon']
    """
    allowed = sorted(accepted)
    for key, value in given.items():
        if key not in allowed:
            raise invalid(str(key), value, f"a keyword argument of {owner}, one of {allowed}")


def constructor_keywords(cls: type) -> list[str]:
    """The keyword arguments ``cls(...)`` accepts by name: those of its ``__init__``, and of each
    base's ``__init__`` for as long as the one before passes ``**kwargs`` on.

    Example:
        >>> class Base:
        ...     def __init__(self, *, a: int = 0) -> None: ...
        >>> class Child(Base):
        ...     def __init__(self, *, b: int = 0, **kwargs: int) -> None: ...
        >>> constructor_keywords(Child)
        ['a', 'b']
    """
    names: set[str] = set()
    for klass in cls.__mro__:
        if "__init__" not in vars(klass):
            continue
        parameters = list(inspect.signature(vars(klass)["__init__"]).parameters.values())[1:]
        names |= {p.name for p in parameters if p.kind in (p.KEYWORD_ONLY, p.POSITIONAL_OR_KEYWORD)}
        if not any(p.kind is p.VAR_KEYWORD for p in parameters):
            break
    return sorted(names)


__all__ = ["LEARNING_RATE", "MOMENTUM", "Interval", "choice", "constructor_keywords", "flag", "fraction",
           "function", "instance", "integer", "keywords", "learning_rate", "momentum", "non_negative", "number",
           "positive", "positive_int"]
