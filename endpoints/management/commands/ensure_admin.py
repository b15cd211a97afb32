"""Create the admin user if missing, and tell the operator how to log in."""

import os
import secrets
from pathlib import Path
from typing import Any

from django.conf import settings
from django.contrib.auth import get_user_model
from django.core.management.base import BaseCommand, CommandParser


def password_file() -> Path:
    """Where a generated admin password is kept, so later runs can show it again."""
    return Path(settings.PGWARDEN_VAR_DIR) / "admin-password"


class Command(BaseCommand):
    help = (
        "Create the admin user (PGWARDEN_ADMIN_USER, default 'admin') with "
        "PGWARDEN_ADMIN_PASSWORD, or a generated password kept in var/admin-password; "
        "print the admin URL and credentials."
    )

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument("--url", default="http://127.0.0.1:8000/admin/")

    def handle(self, *args: object, **options: object) -> None:
        username = settings.PGWARDEN_ADMIN_USER
        wanted = settings.PGWARDEN_ADMIN_PASSWORD
        user_model = get_user_model()
        user = user_model.objects.filter(username=username).first()
        if user is None:
            password = wanted or self._generated_password()
            user_model.objects.create_superuser(username=username, email="", password=password)
            shown = password
        else:
            shown = self._existing_user_password(user, wanted)
            if not (user.is_active and user.is_staff and user.is_superuser):
                # The login printed below must open the admin.
                user.is_active = user.is_staff = user.is_superuser = True
                user.save(update_fields=["is_active", "is_staff", "is_superuser"])
        self.stdout.write(f"admin: {options['url']}  user: {username}  password: {shown}")

    @staticmethod
    def _existing_user_password(user: Any, wanted: str) -> str:
        if wanted:
            if not user.check_password(wanted):
                user.set_password(wanted)
                user.save(update_fields=["password"])
            return wanted
        path = password_file()
        stored = path.read_text().strip() if path.exists() else ""
        if stored and user.check_password(stored):
            return stored
        return "(unchanged since it was set; set PGWARDEN_ADMIN_PASSWORD to reset it)"

    def _generated_password(self) -> str:
        password = secrets.token_urlsafe(12)
        path = password_file()
        path.parent.mkdir(parents=True, exist_ok=True)
        # Created private, never world-readable even for an instant.
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "w") as handle:
            handle.write(password + "\n")
        return password
