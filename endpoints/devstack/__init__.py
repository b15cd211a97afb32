"""The local development stack: PostgreSQL cluster, Redis, and the ``make run`` supervisor.

Used by ``make run``, the test fixtures and the benchmarks, before Django is set up, so it
imports only :mod:`endpoints.core` (import-linter checks it). Callers import the public
names from :mod:`endpoints.devstack.localcluster`; the work is done in ``processes`` (OS
helpers), ``pgstate`` / ``pgcontrol`` / ``pgsetup`` / ``postgres`` (the replicated
cluster, one layer each), ``localredis``, ``listeners`` (stand-in servers for tests) and
``localstack`` (the supervisor of web, worker and beat).
"""
