from django.apps import AppConfig
from django.conf import settings


class EndpointsConfig(AppConfig):
    name = "endpoints"
    verbose_name = "PostgreSQL endpoints"
    default_auto_field = "django.db.models.BigAutoField"

    def ready(self) -> None:
        # Imported here, not at the top: Django must have loaded the apps before the
        # models these modules use can be imported (AppConfig.ready's contract).
        from endpoints.core import crypto
        from endpoints.routing import topology

        crypto.use_keys_from(lambda: settings.PGWARDEN_ENCRYPTION_KEYS)
        topology.connect_signals()
