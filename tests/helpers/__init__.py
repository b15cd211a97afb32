"""Helpers the tests share: starting real servers and processes, registering test data.

``tests/conftest.py`` holds only fixtures (thin wrappers over these) and hooks; test
modules and ``make bench`` import from here. Each module states its own contract.

- ``cluster``: local PostgreSQL clusters and Redis for a test session, started and
  destroyed; killing a backend mid-statement.
- ``processes``: ``manage.py`` in a child process; stopping a child politely, then not.
- ``workers``: real Celery workers and beat in child processes.
- ``registry``: endpoints and clusters registered in the test's control database.
- ``mcp_client``: ``manage.py run_mcp`` driven over stdio by the MCP SDK's client.
"""

from __future__ import annotations

from pathlib import Path

#: The repository's root: where ``manage.py`` is, and the working directory of children.
ROOT = Path(__file__).resolve().parents[2]
