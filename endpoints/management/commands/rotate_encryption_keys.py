"""Re-encrypt every stored password with the newest key in PGWARDEN_ENCRYPTION_KEYS."""

from django.core.management.base import BaseCommand, CommandError
from django.db import transaction

from endpoints.crypto import DecryptionError, rotate
from endpoints.models import Endpoint


class Command(BaseCommand):
    help = (
        "Re-encrypt endpoint passwords with the first (newest) key of PGWARDEN_ENCRYPTION_KEYS. "
        "Afterwards the older keys can be removed."
    )

    @transaction.atomic
    def handle(self, *args: object, **options: object) -> None:
        endpoints = Endpoint.objects.select_for_update().exclude(password_encrypted="")
        count = 0
        for endpoint in endpoints:
            try:
                endpoint.password_encrypted = rotate(endpoint.password_encrypted)
            except DecryptionError as exc:
                # Atomic: one undecryptable password leaves every row as it was.
                raise CommandError(f"endpoint {endpoint}: {exc}; nothing was changed") from None
            endpoint.save(update_fields=["password_encrypted"])
            count += 1
        self.stdout.write(f"re-encrypted {count} password(s) with the newest key")
