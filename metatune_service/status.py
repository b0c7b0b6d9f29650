"""A job's status: the values the ``jobs.status`` column stores and the API sends (a
comparison reports one too, from its jobs'). No dependencies, so the client uses it as well."""

from __future__ import annotations

from enum import Enum


class JobStatus(str, Enum):
    """queued → running → succeeded | failed | cancelled (a failed attempt may send a running
    job back to queued; a queued job may be cancelled at once)."""

    QUEUED = "queued"
    RUNNING = "running"
    SUCCEEDED = "succeeded"
    FAILED = "failed"
    CANCELLED = "cancelled"

    def __str__(self) -> str:
        return self.value

    @property
    def final(self) -> bool:
        """Whether the job has ended: no status follows this one."""
        return self not in (JobStatus.QUEUED, JobStatus.RUNNING)

    @classmethod
    def finals(cls) -> list[JobStatus]:
        """The statuses of a job that has ended (for ``IN`` clauses)."""
        return [status for status in cls if status.final]
