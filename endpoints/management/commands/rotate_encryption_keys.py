"""Re-encrypt every stored password with the newest key in PGWARDEN_ENCRYPTION_KEYS."""

from django.core.management.base import BaseCommand, CommandError
from django.db import transaction

from endpoints.core.crypto import DecryptionError, rotate
from endpoints.models import Cluster, Endpoint

# Every column that holds a Fernet token, by model.
ENDPOINT_TOKENS = ("password_encrypted",)
CLUSTER_TOKENS = ("assistant_password_encrypted", "assistant_write_password_encrypted")


class Command(BaseCommand):
    help = (
        "Re-encrypt stored passwords (endpoints' and clusters' assistant roles') with the "
        "first (newest) key of PGWARDEN_ENCRYPTION_KEYS. Afterwards the older keys can be "
        "removed."
    )

    @transaction.atomic
    def handle(self, *args: object, **options: object) -> None:
        count = 0
        for endpoint in Endpoint.objects.select_for_update().exclude(password_encrypted=""):
            count += _rotate(endpoint, ENDPOINT_TOKENS, f"endpoint {endpoint}")
        for cluster in Cluster.objects.select_for_update():
            count += _rotate(cluster, CLUSTER_TOKENS, f"cluster {cluster}")
        self.stdout.write(f"re-encrypted {count} password(s) with the newest key")


def _rotate(row: Endpoint | Cluster, fields: tuple[str, ...], label: str) -> int:
    """Re-encrypt ``row``'s non-empty token ``fields``; how many there were."""
    rotated = []
    for field in fields:
        token = getattr(row, field)
        if not token:
            continue
        try:
            setattr(row, field, rotate(token))
        except DecryptionError as exc:
            # Atomic: one undecryptable password leaves every row as it was.
            raise CommandError(f"{label}: {exc}; nothing was changed") from None
        rotated.append(field)
    if rotated:
        row.save(update_fields=rotated)
    return len(rotated)
