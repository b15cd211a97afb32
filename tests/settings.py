"""Settings for the test suite: the production settings, fed a controlled environment.

Every variable pgwarden reads is set here, so a developer's ``.env`` or exported
variables can never point the tests at a real control database, real keys or a
real Redis. Generated values (the encryption key, Redis's port) are chosen once
per test run by the first process that imports this module; child processes
(``manage.py`` runs, Celery workers) inherit them through the environment, so
they share the test database, keys and broker with the test process.
"""

import os

from cryptography.fernet import Fernet

from project.env import BASE_DIR, VARIABLES

_OWNER = "PGWARDEN_TEST_ENV_OWNER"


def _free_port() -> int:
    # Imported here: devstack.localcluster needs no Django, but keep this module light.
    from endpoints.devstack.localcluster import free_port

    return free_port()


if _OWNER not in os.environ:
    test_values = {
        "PGWARDEN_ENV_FILE": "",
        "SECRET_KEY": "test-secret-key-that-is-long-enough-for-django-checks",
        "PGWARDEN_ENCRYPTION_KEYS": Fernet.generate_key().decode(),
        # The test database itself, one per run (pid): children open the file the test
        # process created, and concurrent runs never share one.
        "DATABASE_URL": f"sqlite:///{BASE_DIR / 'var' / f'test-{os.getpid()}.sqlite3'}",
        "DEBUG": "false",
        "ALLOWED_HOSTS": "127.0.0.1,localhost,testserver",
        "LOG_LEVEL": "DEBUG",
        "REDIS_URL": f"redis://127.0.0.1:{_free_port()}/0",
        "CELERY_BROKER_URL": "",
        "PGWARDEN_ADMIN_PASSWORD": "",
    }
    for name, variable in VARIABLES.items():
        os.environ[name] = test_values.get(name, variable.default or "")
    os.environ[_OWNER] = str(os.getpid())

from project.settings import *  # noqa: E402, F403

DATABASES["default"]["TEST"] = {"NAME": DATABASES["default"]["NAME"]}  # noqa: F405

# The admin tests log a superuser in per test; a slow, secure hash buys nothing here.
PASSWORD_HASHERS = ["django.contrib.auth.hashers.MD5PasswordHasher"]
