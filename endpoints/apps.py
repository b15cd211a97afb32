from django.apps import AppConfig


class EndpointsConfig(AppConfig):
    name = "endpoints"
    verbose_name = "PostgreSQL endpoints"
    default_auto_field = "django.db.models.BigAutoField"

    def ready(self) -> None:
        from endpoints.routing import topology

        topology.connect_signals()
