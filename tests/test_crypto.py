"""core.crypto: passwords encrypted at rest, keys that rotate, secrets kept out of logs."""

from __future__ import annotations

import copy
import io
import logging
import pickle
from collections.abc import Iterator

import pytest
from cryptography.fernet import Fernet
from django.core.management import CommandError, call_command
from django.db import connection
from django.test import override_settings

from endpoints.core import crypto
from endpoints.core.crypto import DecryptionError, RedactSecretsFilter, Secret
from endpoints.models import Cluster, Endpoint

PASSWORD = "crypto-test-password-Vb93"
OLD_KEY = Fernet.generate_key().decode()
NEW_KEY = Fernet.generate_key().decode()


def _raw_password_column(endpoint: Endpoint) -> str:
    table = Endpoint._meta.db_table
    with connection.cursor() as cursor:
        # The table name comes from the model, not from input.
        cursor.execute(
            f"SELECT password_encrypted FROM {table} WHERE id = %s",  # noqa: S608
            [endpoint.pk],
        )
        (value,) = cursor.fetchone()
    return value


@pytest.fixture
def endpoint(db: None) -> Endpoint:
    cluster = Cluster.objects.create(name="crypto")
    endpoint = Endpoint(cluster=cluster, name="pg1", host="127.0.0.1")
    endpoint.set_password(PASSWORD)
    endpoint.save()
    return endpoint


@pytest.fixture
def logger_output() -> Iterator[tuple[logging.Logger, io.StringIO]]:
    stream = io.StringIO()
    handler = logging.StreamHandler(stream)
    handler.setFormatter(logging.Formatter("%(levelname)s %(message)s"))
    handler.addFilter(RedactSecretsFilter())
    logger = logging.getLogger("pgwarden.tests.crypto")
    logger.addHandler(handler)
    logger.propagate = False
    logger.setLevel(logging.DEBUG)
    try:
        yield logger, stream
    finally:
        logger.removeHandler(handler)
        logger.propagate = True


# At rest


def test_the_password_column_holds_a_fernet_token_not_the_plaintext(endpoint: Endpoint) -> None:
    raw = _raw_password_column(endpoint)

    assert PASSWORD not in raw
    assert raw.startswith("gAAAAA")  # Fernet version byte 0x80, base64url-encoded
    assert crypto.decrypt(raw).reveal() == PASSWORD


def test_encrypt_decrypt_round_trip() -> None:
    token = crypto.encrypt(PASSWORD)

    assert token != PASSWORD
    assert crypto.decrypt(token) == Secret(PASSWORD)
    assert crypto.encrypt(PASSWORD) != token  # fresh IV and timestamp each time


def test_round_trip_through_the_database(endpoint: Endpoint) -> None:
    assert Endpoint.objects.get(pk=endpoint.pk).get_password().reveal() == PASSWORD


# Secret


def test_secret_repr_and_str_are_masked() -> None:
    secret = Secret(PASSWORD)

    for text in (repr(secret), str(secret), f"{secret}", f"{secret!r}", repr([secret])):
        assert PASSWORD not in text
        assert crypto.MASK in text
    assert secret.reveal() == PASSWORD
    assert repr(Secret("")) == "Secret('')"


def test_secret_cannot_be_pickled_or_copied() -> None:
    with pytest.raises(TypeError, match="cannot be pickled"):
        pickle.dumps(Secret(PASSWORD))
    with pytest.raises(TypeError, match="cannot be pickled"):
        copy.copy(Secret(PASSWORD))


# Key rotation


def test_a_token_from_the_old_key_decrypts_while_the_old_key_is_listed() -> None:
    with override_settings(PGWARDEN_ENCRYPTION_KEYS=[OLD_KEY]):
        token = crypto.encrypt(PASSWORD)

    with override_settings(PGWARDEN_ENCRYPTION_KEYS=[NEW_KEY, OLD_KEY]):
        assert crypto.decrypt(token).reveal() == PASSWORD
    with override_settings(PGWARDEN_ENCRYPTION_KEYS=[NEW_KEY]), pytest.raises(DecryptionError):
        crypto.decrypt(token)


def test_rotate_encryption_keys_re_encrypts_with_the_newest_key(db: None) -> None:
    cluster = Cluster.objects.create(name="rotation")
    with override_settings(PGWARDEN_ENCRYPTION_KEYS=[OLD_KEY]):
        with_password = Endpoint(cluster=cluster, name="pg1", host="127.0.0.1")
        with_password.set_password(PASSWORD)
        with_password.save()
    without_password = Endpoint.objects.create(cluster=cluster, name="pg2", host="127.0.0.1")
    old_token = _raw_password_column(with_password)

    out = io.StringIO()
    with override_settings(PGWARDEN_ENCRYPTION_KEYS=[NEW_KEY, OLD_KEY]):
        call_command("rotate_encryption_keys", stdout=out)

    assert "re-encrypted 1 password(s)" in out.getvalue()
    new_token = _raw_password_column(with_password)
    assert new_token != old_token
    assert _raw_password_column(without_password) == ""
    with override_settings(PGWARDEN_ENCRYPTION_KEYS=[NEW_KEY]):
        assert Endpoint.objects.get(pk=with_password.pk).get_password().reveal() == PASSWORD


def test_rotate_encryption_keys_re_encrypts_the_assistant_roles_passwords_too(db: None) -> None:
    with override_settings(PGWARDEN_ENCRYPTION_KEYS=[OLD_KEY]):
        cluster = Cluster(name="rotation", assistant_user="reader", assistant_write_user="writer")
        cluster.set_assistant_password("reader-password")
        cluster.set_assistant_password("writer-password", writes=True)
        cluster.save()
    before = (cluster.assistant_password_encrypted, cluster.assistant_write_password_encrypted)

    out = io.StringIO()
    with override_settings(PGWARDEN_ENCRYPTION_KEYS=[NEW_KEY, OLD_KEY]):
        call_command("rotate_encryption_keys", stdout=out)

    assert "re-encrypted 2 password(s)" in out.getvalue()
    stored = Cluster.objects.get(pk=cluster.pk)
    after = (stored.assistant_password_encrypted, stored.assistant_write_password_encrypted)
    assert all(new != old for new, old in zip(after, before, strict=True))
    with override_settings(PGWARDEN_ENCRYPTION_KEYS=[NEW_KEY]):
        reader = stored.assistant_role()
        writer = stored.assistant_role(writes=True)
        assert reader is not None
        assert writer is not None
        assert reader.password().reveal() == "reader-password"
        assert writer.password().reveal() == "writer-password"


def test_rotate_encryption_keys_changes_nothing_if_one_password_is_undecryptable(
    db: None,
) -> None:
    cluster = Cluster.objects.create(name="rotation")
    with override_settings(PGWARDEN_ENCRYPTION_KEYS=[OLD_KEY]):
        good = Endpoint(cluster=cluster, name="a-good", host="127.0.0.1")
        good.set_password(PASSWORD)
        good.save()
    lost = Endpoint(cluster=cluster, name="b-lost", host="127.0.0.1")
    lost.set_password(PASSWORD)  # with the test settings' key, which is not listed below
    lost.save()
    before = {e.pk: _raw_password_column(e) for e in (good, lost)}

    with (
        override_settings(PGWARDEN_ENCRYPTION_KEYS=[NEW_KEY, OLD_KEY]),
        pytest.raises(CommandError, match="PGWARDEN_ENCRYPTION_KEYS") as excinfo,
    ):
        call_command("rotate_encryption_keys")

    assert "nothing was changed" in str(excinfo.value)
    assert PASSWORD not in str(excinfo.value)
    assert {e.pk: _raw_password_column(e) for e in (good, lost)} == before


def test_an_undecryptable_token_names_the_setting_and_not_the_plaintext() -> None:
    with override_settings(PGWARDEN_ENCRYPTION_KEYS=[OLD_KEY]):
        token = crypto.encrypt(PASSWORD)

    with (
        override_settings(PGWARDEN_ENCRYPTION_KEYS=[NEW_KEY]),
        pytest.raises(DecryptionError) as excinfo,
    ):
        crypto.decrypt(token)

    message = str(excinfo.value)
    assert "PGWARDEN_ENCRYPTION_KEYS" in message
    assert PASSWORD not in message
    assert token not in message
    # Raised "from None": no chained InvalidToken to leak details either.
    assert excinfo.value.__cause__ is None
    assert excinfo.value.__suppress_context__


def test_garbage_in_the_column_is_a_decryption_error(endpoint: Endpoint) -> None:
    endpoint.password_encrypted = "not a token"

    with pytest.raises(DecryptionError, match="PGWARDEN_ENCRYPTION_KEYS"):
        endpoint.get_password()


# Logs


def test_redact_secrets_filter_scrubs_a_known_password_from_messages(
    logger_output: tuple[logging.Logger, io.StringIO],
) -> None:
    logger, stream = logger_output
    Secret(PASSWORD)  # known, as every decrypted password is

    logger.warning("connecting with password=%s to %s", PASSWORD, "db1")
    logger.warning(f"inline {PASSWORD} too")

    output = stream.getvalue()
    assert PASSWORD not in output
    assert f"connecting with password={crypto.MASK} to db1" in output
    assert f"inline {crypto.MASK} too" in output


def test_redact_secrets_filter_scrubs_a_known_password_from_tracebacks(
    logger_output: tuple[logging.Logger, io.StringIO],
) -> None:
    logger, stream = logger_output
    secret = crypto.decrypt(crypto.encrypt(PASSWORD))

    try:
        try:
            raise ValueError(f"server rejected {secret.reveal()}")
        except ValueError as inner:
            raise RuntimeError(f"retry with {secret.reveal()} failed") from inner
    except RuntimeError:
        logger.exception("probe failed")

    output = stream.getvalue()
    assert "Traceback" in output
    assert "ValueError: server rejected" in output
    assert "RuntimeError: retry with" in output
    assert PASSWORD not in output
    assert output.count(crypto.MASK) >= 2


def test_redact_secrets_filter_leaves_other_messages_alone(
    logger_output: tuple[logging.Logger, io.StringIO],
) -> None:
    logger, stream = logger_output

    logger.info("nothing %s here", "secret-free")

    assert stream.getvalue() == "INFO nothing secret-free here\n"


def test_short_strings_are_not_scrubbed() -> None:
    Secret("pw")  # too common to scrub without mangling text

    assert crypto.redact("pw is short") == "pw is short"
    assert crypto.redact(f"x {PASSWORD} y", PASSWORD) == f"x {crypto.MASK} y"


# Text others may see


@pytest.mark.parametrize(
    ("text", "masked"),
    [
        ("host=db1 password=s3cret-value user=u", "host=db1 password=******** user=u"),
        ("password = 'it''s a secret' host=db1", "password = ******** host=db1"),
        ("password='with \\' quote' port=5", "password=******** port=5"),
        ("PGPASSWORD=abc123 psql", "PGPASSWORD=******** psql"),
        ("postgresql://app:s3cret@db1:5432/app", "postgresql://app:********@db1:5432/app"),
        ("redis://:token-value@cache:6379/0", "redis://:********@cache:6379/0"),
    ],
)
def test_redact_masks_passwords_in_connection_strings(text: str, masked: str) -> None:
    assert crypto.redact(text) == masked
    assert crypto.mask_conninfo(text) == masked


def test_redact_does_not_search_for_every_password_the_process_knows() -> None:
    """A search would be an oracle: PostgreSQL echoes input back, right guesses masked."""
    Secret(PASSWORD)  # decrypted, so known to the process
    right = crypto.redact(f'invalid input syntax for type integer: "{PASSWORD}"')
    wrong = crypto.redact('invalid input syntax for type integer: "wrong-guess-1234"')

    assert right.replace(PASSWORD, "GUESS") == wrong.replace("wrong-guess-1234", "GUESS")
    assert crypto.MASK not in right
    # The log filter, for operators only, still scrubs what the process knows.
    assert crypto.redact_known(f"x {PASSWORD} y") == f"x {crypto.MASK} y"
