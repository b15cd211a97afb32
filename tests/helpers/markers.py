"""The ``servers`` marker: which tests need a real PostgreSQL, Redis, Celery or browser.

Contract: ``tests/conftest.py`` marks ``servers`` every collected test whose fixture
closure holds a name in ``SERVER_FIXTURES``; modules that start servers without those
fixtures declare ``pytestmark = pytest.mark.servers`` (``tests/test_markers.py`` checks
both). ``make test-unit`` runs ``pytest -m "not servers"``, in which the server fixtures
refuse to start (``deselects_servers``), so a test that reached one another way fails
instead of quietly starting a cluster.
"""

from __future__ import annotations

#: Fixtures that start a real PostgreSQL, Redis or Celery. pytest's fixture closure of a
#: test holds every fixture it uses, directly or through others (``local_cluster``,
#: ``fresh_router``, ``celery_beat``, a module's own fixture built on these), so naming
#: the ones that start servers is enough.
SERVER_FIXTURES = frozenset({"pg_cluster", "redis_server", "celery_worker", "fresh"})

#: The marker expression ``make test-unit`` selects with.
UNIT_EXPRESSION = "not servers"


def deselects_servers(markexpr: str) -> bool:
    """Whether a ``-m`` expression leaves ``servers`` tests out (as ``make test-unit`` does).

    A plain reading, not a parser: it looks for ``not servers`` whatever the spacing.
    """
    return UNIT_EXPRESSION in " ".join(markexpr.replace("(", " ").replace(")", " ").split())
