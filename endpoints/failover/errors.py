"""What a failover, switchover, fence or re-admission raises: each says why and what to do.

Messages name the cluster or endpoint and the next step, never a password (they are
built from redacted text). :class:`FailoverInProgress` is not a failure of the procedure:
another worker is running one.
"""

from __future__ import annotations


class FailoverError(Exception):
    """A failover, switchover, fence or re-admission could not be done; says why and what to do."""


class FailoverInProgress(FailoverError):
    """Another worker holds this cluster's failover lock."""


class UnknownEndpoint(FailoverError):
    """``to`` names no endpoint of the cluster, or names its primary."""


class PrimaryUnavailable(FailoverError):
    """A switchover needs a healthy primary, and this one is down, missing or in recovery."""


class NotReadmittable(FailoverError):
    """A fenced endpoint cannot be re-admitted yet: it must answer as a replica."""
