"""Django settings for pgwarden.

Every value comes from the environment (or an optional ``.env``, or the file
``PGWARDEN_ENV_FILE`` names) through
:mod:`project.env`, which names the variable and shows an example when one is
missing or malformed.
"""

from project import env

BASE_DIR = env.BASE_DIR
# The project's .env unless PGWARDEN_ENV_FILE names another file (or, blank, none).
env.load_dotenv(env.read("PGWARDEN_ENV_FILE"))

SECRET_KEY = env.read("SECRET_KEY")
DEBUG = env.read("DEBUG")
ALLOWED_HOSTS = env.read("ALLOWED_HOSTS")
CSRF_TRUSTED_ORIGINS = env.read("CSRF_TRUSTED_ORIGINS")

PGWARDEN_ENCRYPTION_KEYS = env.read("PGWARDEN_ENCRYPTION_KEYS")
PGWARDEN_ADMIN_USER = env.read("PGWARDEN_ADMIN_USER")
PGWARDEN_ADMIN_PASSWORD = env.read("PGWARDEN_ADMIN_PASSWORD")
PGWARDEN_VAR_DIR = BASE_DIR / "var"

INSTALLED_APPS = [
    "django.contrib.admin",
    "django.contrib.auth",
    "django.contrib.contenttypes",
    "django.contrib.sessions",
    "django.contrib.messages",
    "django.contrib.staticfiles",
    "endpoints",
    "mcpbridge",
]

MIDDLEWARE = [
    "django.middleware.security.SecurityMiddleware",
    "whitenoise.middleware.WhiteNoiseMiddleware",
    "django.contrib.sessions.middleware.SessionMiddleware",
    "django.middleware.common.CommonMiddleware",
    "django.middleware.csrf.CsrfViewMiddleware",
    "django.contrib.auth.middleware.AuthenticationMiddleware",
    "django.contrib.messages.middleware.MessageMiddleware",
    "django.middleware.clickjacking.XFrameOptionsMiddleware",
]

ROOT_URLCONF = "project.urls"

TEMPLATES = [
    {
        "BACKEND": "django.template.backends.django.DjangoTemplates",
        "DIRS": [],
        "APP_DIRS": True,
        "OPTIONS": {
            "context_processors": [
                "django.template.context_processors.request",
                "django.contrib.auth.context_processors.auth",
                "django.contrib.messages.context_processors.messages",
            ],
        },
    },
]

WSGI_APPLICATION = "project.wsgi.application"
ASGI_APPLICATION = "project.asgi.application"

_database = env.read("DATABASE_URL")
if _database["ENGINE"].endswith("sqlite3"):
    # Web, worker and beat write at once: WAL lets readers proceed during a write, and
    # IMMEDIATE transactions take the write lock up front instead of failing mid-way
    # with "database is locked".
    _database.setdefault("OPTIONS", {}).update(
        {
            "init_command": "PRAGMA journal_mode=WAL; PRAGMA synchronous=NORMAL;",
            "transaction_mode": "IMMEDIATE",
            "timeout": 20,
        }
    )
    # A file, not memory, so Celery workers started by tests share the test database.
    _database["TEST"] = {"NAME": str(PGWARDEN_VAR_DIR / "test.sqlite3")}
else:
    _database.setdefault("CONN_MAX_AGE", 60)
    _database.setdefault("CONN_HEALTH_CHECKS", True)
DATABASES = {"default": _database}

DEFAULT_AUTO_FIELD = "django.db.models.BigAutoField"

AUTH_PASSWORD_VALIDATORS = [
    {"NAME": "django.contrib.auth.password_validation.UserAttributeSimilarityValidator"},
    {"NAME": "django.contrib.auth.password_validation.MinimumLengthValidator"},
    {"NAME": "django.contrib.auth.password_validation.CommonPasswordValidator"},
    {"NAME": "django.contrib.auth.password_validation.NumericPasswordValidator"},
]

LANGUAGE_CODE = "en-us"
TIME_ZONE = env.read("TIME_ZONE")
USE_I18N = True
USE_TZ = True

STATIC_URL = "static/"
STATIC_ROOT = PGWARDEN_VAR_DIR / "static"
STATIC_ROOT.mkdir(parents=True, exist_ok=True)
# Serve the admin's assets from the app directories, so no collectstatic step is needed.
WHITENOISE_USE_FINDERS = True

REDIS_URL = env.read("REDIS_URL")
CELERY_BROKER_URL = env.read("CELERY_BROKER_URL") or REDIS_URL
CELERY_RESULT_BACKEND = CELERY_BROKER_URL
CELERY_TASK_SERIALIZER = "json"
CELERY_RESULT_SERIALIZER = "json"
CELERY_ACCEPT_CONTENT = ["json"]
CELERY_RESULT_EXPIRES = 3600
CELERY_TASK_ACKS_LATE = True
CELERY_WORKER_PREFETCH_MULTIPLIER = 1
CELERY_BROKER_CONNECTION_RETRY_ON_STARTUP = True
CELERY_TIMEZONE = "UTC"
CELERY_BEAT_SCHEDULE_FILENAME = str(PGWARDEN_VAR_DIR / "celerybeat-schedule")
# The dispatcher starts each cluster's sweep when its check_interval_s has elapsed (claimed
# in Redis, so a restarted or second beat never doubles one). A tick still queued when the
# next is due is dropped (expires), not run late.
CELERY_BEAT_SCHEDULE: dict[str, dict] = {
    "dispatch-sweeps": {
        "task": "endpoints.dispatch_sweeps",
        "schedule": 1.0,
        "options": {"expires": 1.0},
    },
    "prune-health-checks": {
        "task": "endpoints.prune_health_checks",
        "schedule": 3600.0,
        "options": {"expires": 600.0},
    },
}
PGWARDEN_HEALTH_RETENTION_DAYS = env.read("PGWARDEN_HEALTH_RETENTION_DAYS")

# The MCP server's defaults (manage.py run_mcp): read-only, no admin tools.
PGWARDEN_MCP_CLUSTER = env.read("PGWARDEN_MCP_CLUSTER")
PGWARDEN_MCP_ALLOW_WRITES = env.read("PGWARDEN_MCP_ALLOW_WRITES")
PGWARDEN_MCP_ALLOW_ADMIN = env.read("PGWARDEN_MCP_ALLOW_ADMIN")
# Assistant queries one run_mcp process runs at once; more are refused as busy at once.
PGWARDEN_MCP_MAX_CONCURRENT_QUERIES = env.read("PGWARDEN_MCP_MAX_CONCURRENT_QUERIES")
# The largest timeout_ms an assistant may ask for, and every assistant statement's lock_timeout.
PGWARDEN_MCP_MAX_TIMEOUT_MS = env.read("PGWARDEN_MCP_MAX_TIMEOUT_MS")
PGWARDEN_MCP_LOCK_TIMEOUT_MS = env.read("PGWARDEN_MCP_LOCK_TIMEOUT_MS")

# GET /metrics requires "Authorization: Bearer <token>" when set (endpoints/views.py).
PGWARDEN_METRICS_TOKEN = env.read("PGWARDEN_METRICS_TOKEN")

# Alerts: always logged; emailed to ADMINS (mail_admins) and POSTed to the webhook when set.
PGWARDEN_ALERT_WEBHOOK_URL = env.read("PGWARDEN_ALERT_WEBHOOK_URL")
ADMINS = [(address, address) for address in env.read("PGWARDEN_ALERT_EMAILS")]
SERVER_EMAIL = DEFAULT_FROM_EMAIL = env.read("PGWARDEN_ALERT_EMAIL_FROM")
EMAIL_SUBJECT_PREFIX = "[pgwarden] "
_email = env.read("EMAIL_URL")
EMAIL_BACKEND = _email["EMAIL_BACKEND"]
EMAIL_HOST = _email["EMAIL_HOST"]
EMAIL_PORT = _email["EMAIL_PORT"]
EMAIL_HOST_USER = _email["EMAIL_HOST_USER"]
EMAIL_HOST_PASSWORD = _email["EMAIL_HOST_PASSWORD"]
EMAIL_USE_TLS = _email["EMAIL_USE_TLS"]
EMAIL_USE_SSL = _email["EMAIL_USE_SSL"]
if _email["EMAIL_FILE_PATH"]:
    EMAIL_FILE_PATH = _email["EMAIL_FILE_PATH"]
# Alert mail is sent on a background thread; a mail server that hangs must not pile them up.
EMAIL_TIMEOUT = 10

LOG_LEVEL = env.read("LOG_LEVEL")
LOGGING = {
    "version": 1,
    "disable_existing_loggers": False,
    "filters": {"redact_secrets": {"()": "endpoints.core.crypto.RedactSecretsFilter"}},
    "formatters": {
        "plain": {"format": "%(asctime)s %(levelname)s %(name)s: %(message)s"},
    },
    "handlers": {
        "stderr": {
            "class": "logging.StreamHandler",
            "formatter": "plain",
            "filters": ["redact_secrets"],
        },
    },
    "root": {"handlers": ["stderr"], "level": "WARNING"},
    "loggers": {
        "pgwarden": {"handlers": ["stderr"], "level": LOG_LEVEL, "propagate": False},
        "django": {"handlers": ["stderr"], "level": "INFO", "propagate": False},
    },
}

SESSION_COOKIE_HTTPONLY = True
X_FRAME_OPTIONS = "DENY"
SECURE_CONTENT_TYPE_NOSNIFF = True

# Behind a TLS-terminating proxy. No SECURE_SSL_REDIRECT: load balancers poll /healthz and
# /clusters/... over plain HTTP inside the network. Django sends HSTS on secure requests only.
PGWARDEN_HTTPS = env.read("PGWARDEN_HTTPS")
if PGWARDEN_HTTPS:
    SESSION_COOKIE_SECURE = True
    CSRF_COOKIE_SECURE = True
    SECURE_HSTS_SECONDS = 31_536_000  # one year; no includeSubDomains, no preload
    SECURE_PROXY_SSL_HEADER = ("HTTP_X_FORWARDED_PROTO", "https")
