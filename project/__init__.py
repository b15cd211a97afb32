"""pgwarden's Django project: settings, URLs, the Celery app."""

from project.celery import app as celery_app

__all__ = ("celery_app",)
