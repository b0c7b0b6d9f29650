"""The service's settings, read once at start-up from ``METATUNE_*`` environment variables
(:func:`load_settings`: a value that does not parse is one line naming its variable)."""

from __future__ import annotations

import hashlib
import os
from pathlib import Path

from pydantic import Field, PrivateAttr, ValidationError
from pydantic_settings import BaseSettings, SettingsConfigDict

from metatune.errors import UserError

ENV_PREFIX = "METATUNE_"


class ConfigurationError(UserError):
    """A ``METATUNE_*`` setting this service cannot use; the message names the variable and
    what to change (the command line prints it as one line and exits with code 2)."""


def default_database_url() -> str:
    """A SQLite file in the working directory."""
    return f"sqlite:///{Path.cwd() / 'metatune.db'}"


class Settings(BaseSettings):
    """Everything the API and the workers are configured by (env prefix ``METATUNE_``)."""

    model_config = SettingsConfigDict(env_prefix=ENV_PREFIX, extra="ignore")

    database_url: str = Field(default_factory=default_database_url)
    api_tokens: str = ""
    """Comma-separated ``owner:token`` or bare ``token`` (its owner is then
    :func:`owner_of_bare_token`: a name derived from the token, never the token itself)."""
    max_gradient_evals: float = 2_000_000
    default_gradient_evals: float = 20_000
    max_inner_steps: int = 10_000
    max_trials: int = 10_000
    max_cpu_per_trial: float = float(os.cpu_count() or 1)
    max_gpu_per_trial: float = 8.0
    max_concurrency: int = 64
    max_seeds: int = 20
    max_hyperparameters: int = 256
    """Most numbers a job's points may hold: 2·K·G for K schedule knots and G parameter groups."""
    max_objective_size: int = 4096
    """Largest integer objective parameter (dim, hidden, width, batch_size, …) a job may ask for."""
    max_body_bytes: int = 64 * 1024
    max_json_depth: int = 32
    """Deepest nesting of arrays and objects a request body may have (a job spec needs 5)."""
    rate_limit: float = 300.0
    """Requests per second a token may make on average (0: no limit); past it, 429 with Retry-After.
    Each API process keeps its own count (``serve --processes N``: up to N times this)."""
    rate_burst: float = 600.0
    """Requests a token may make at once before :attr:`rate_limit` applies."""
    keepalive_seconds: float = 10.0
    """Longest silence of an event stream: a comment line is sent when nothing else was."""
    lease_seconds: float = 30.0
    heartbeat_seconds: float = 5.0
    max_attempts: int = 3
    poll_seconds: float = 0.5
    ray_address: str | None = None
    optuna_storage: str | None = None
    """Where every job is also written as an Optuna study (:mod:`metatune_service.optuna_storage`),
    so that ``optuna-dashboard <url>`` opens it: an SQLAlchemy URL Optuna's ``RDBStorage``
    takes, or ``off``. Unset: Optuna's tables cannot share a schema with the service's (both
    have a table ``trials``), so beside a SQLite database ``…/name.db`` it is the file
    ``…/name-optuna.db``, and in a PostgreSQL database the schema ``optuna`` of the same
    database (the URL with ``options=-csearch_path=optuna``; the schema is created when
    missing). Any other database has no default: set a URL, or ``off``."""
    output_dir: Path = Field(default_factory=lambda: Path.cwd() / "metatune-out" / "service")
    ray_host: str = "127.0.0.1"
    """The address the embedded Ray's processes listen on (:func:`metatune.distributed.ensure_ray`):
    loopback unless another machine's Ray workers must reach it."""
    _tokens: dict[str, str] | None = PrivateAttr(default=None)

    def tokens(self) -> dict[str, str]:
        """token → owner from ``api_tokens`` (parsed once)."""
        if self._tokens is not None:
            return self._tokens
        pairs = {}
        for item in (part.strip() for part in self.api_tokens.split(",")):
            if item:
                owner, _, token = item.rpartition(":")
                pairs[token] = owner or owner_of_bare_token(token)
        self._tokens = pairs
        return pairs


def owner_of_bare_token(token: str) -> str:
    """The owner of a token given without one: ``token-`` and the first 12 hex digits of its
    SHA-256, so that job responses (which show the owner) never show a token.

    Example:
        >>> owner_of_bare_token("s3cret")
        'token-1ec1c26b50d5'
    """
    return "token-" + hashlib.sha256(token.encode()).hexdigest()[:12]


def load_settings(**values: object) -> Settings:
    """:class:`Settings` from the environment (``values`` override it), or a
    :class:`ConfigurationError` naming the first variable whose value does not parse.

    Example:
        >>> try:  # doctest: +ELLIPSIS
        ...     load_settings(max_trials="many")
        ... except ConfigurationError as error:
        ...     print(error)
        METATUNE_MAX_TRIALS='many' is invalid: Input should be a valid integer, ...
    """
    try:
        return Settings(**values)
    except ValidationError as error:
        problems = error.errors()
        first = problems[0]
        name = ENV_PREFIX + str(first["loc"][0]).upper() if first["loc"] else ENV_PREFIX + "*"
        shown = repr(first.get("input"))
        shown = shown if len(shown) <= 60 else shown[:57] + "..."
        more = f" (and {len(problems) - 1} more)" if len(problems) > 1 else ""
        raise ConfigurationError(f"{name}={shown} is invalid: {first['msg']}{more}") from None
