"""The library's exceptions; the service maps them to HTTP codes in one place."""

from __future__ import annotations

from typing import Any


class MetatuneError(Exception):
    """Base class of every error metatune raises on purpose."""


class InvalidArgumentError(MetatuneError, ValueError):
    """An argument is outside its valid range; the message says what to change."""


class UserError(MetatuneError):
    """A user's mistake outside a function's arguments (a server that refuses a request, a
    database at an older revision, a job spec a server will not run); ``str()`` says what to
    change. The command line prints it as one line on stderr and exits with code 2."""


class NonFiniteCurvatureError(InvalidArgumentError):
    """A Hessian-vector product at ``params`` is NaN or inf: no local quadratic model exists."""


def invalid(name: str, value: Any, expected: str) -> InvalidArgumentError:
    """Build the error for argument ``name`` with ``value``; ``expected`` names the valid range.

    Example:
        >>> str(invalid("steps", 0, "an integer >= 1"))
        'steps=0 is invalid: expected an integer >= 1'
    """
    shown = repr(value)
    if len(shown) > 80:
        shown = shown[:77] + "..."
    return InvalidArgumentError(f"{name}={shown} is invalid: expected {expected}")
