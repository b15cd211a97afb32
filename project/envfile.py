"""Write a first-run ``.env`` with fresh secrets: ``python -m project.envfile .env``.

An existing file is left alone: its encryption keys decrypt the passwords
already stored, so replacing them would lose every credential.
"""

import secrets
import sys
from pathlib import Path

from cryptography.fernet import Fernet


def render() -> str:
    return (
        "# Written on first run with fresh secrets; .env.example lists every variable.\n"
        f"SECRET_KEY={secrets.token_urlsafe(50)}\n"
        f"PGWARDEN_ENCRYPTION_KEYS={Fernet.generate_key().decode()}\n"
        "DEBUG=false\n"
        "ALLOWED_HOSTS=127.0.0.1,localhost\n"
    )


def main(argv: list[str]) -> int:
    path = Path(argv[1] if len(argv) > 1 else ".env")
    if path.exists():
        print(f"{path} exists; keeping it")
        return 0
    path.write_text(render())
    path.chmod(0o600)
    print(f"wrote {path} with fresh SECRET_KEY and PGWARDEN_ENCRYPTION_KEYS")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
