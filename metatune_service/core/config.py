"""The service's settings, read once at start-up from ``METATUNE_*`` environment variables."""

from __future__ import annotations

import hashlib
import os
from pathlib import Path

from pydantic import Field, PrivateAttr
from pydantic_settings import BaseSettings, SettingsConfigDict


def default_database_url() -> str:
    """A SQLite file in the working directory."""
    return f"sqlite:///{Path.cwd() / 'metatune.db'}"


class Settings(BaseSettings):
    """Everything the API and the workers are configured by (env prefix ``METATUNE_``)."""

    model_config = SettingsConfigDict(env_prefix="METATUNE_", extra="ignore")

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
