"""endpoints.core.waiting and endpoints.core.errortext: the one wait loop and error text."""

from __future__ import annotations

import psycopg
import pytest
from hypothesis import given
from hypothesis import strategies as st

from endpoints.core.errortext import first_line, one_line, with_sqlstate
from endpoints.core.waiting import poll_until


class FakeClock:
    """A clock that advances only when slept on, so the loop's timing is exact."""

    def __init__(self) -> None:
        self.now_s = 100.0
        self.sleeps: list[float] = []

    def __call__(self) -> float:
        return self.now_s

    def sleep(self, seconds: float) -> None:
        self.sleeps.append(seconds)
        self.now_s += seconds


def test_poll_until_returns_the_first_truthy_result_without_sleeping_further():
    clock = FakeClock()
    answers = iter([None, 0, "ready", "never reached"])
    assert poll_until(lambda: next(answers), timeout_s=5, clock=clock, sleep=clock.sleep) == "ready"
    assert clock.sleeps == [0.05, 0.05]


def test_poll_until_gives_up_at_the_deadline_with_the_last_falsy_result():
    clock = FakeClock()
    calls: list[float] = []

    def check() -> bool:
        calls.append(clock.now_s)
        return False

    result = poll_until(check, timeout_s=1.0, interval_s=0.3, clock=clock, sleep=clock.sleep)
    assert result is False
    # Sleeps never run past the deadline, and the condition is checked once at it.
    assert abs(sum(clock.sleeps) - 1.0) < 1e-9
    assert abs(calls[-1] - 101.0) < 1e-9


def test_poll_until_checks_once_even_without_time():
    clock = FakeClock()
    assert poll_until(lambda: True, timeout_s=0, clock=clock, sleep=clock.sleep) is True
    assert poll_until(lambda: [], timeout_s=-1, clock=clock, sleep=clock.sleep) == []
    assert clock.sleeps == []


@given(
    timeout_s=st.floats(min_value=0, max_value=30),
    interval_s=st.floats(min_value=0.001, max_value=5),
)
def test_poll_until_never_sleeps_past_its_deadline(timeout_s: float, interval_s: float):
    clock = FakeClock()
    poll_until(
        lambda: False, timeout_s=timeout_s, interval_s=interval_s, clock=clock, sleep=clock.sleep
    )
    assert sum(clock.sleeps) <= timeout_s + 1e-6
    assert all(s <= interval_s + 1e-9 for s in clock.sleeps)


def test_first_line_keeps_the_cause_and_masks_secrets():
    exc = RuntimeError("password s3cret rejected\nDETAIL: more")
    line = first_line(exc, "s3cret")
    assert "s3cret" not in line
    assert line.startswith("password ")
    assert line.endswith(" rejected")
    assert "DETAIL" not in first_line(exc)
    assert first_line(ValueError("")) == "ValueError"


def test_one_line_joins_lines_and_names_the_sqlstate():
    exc = psycopg.errors.UndefinedTable('relation "x" does not exist\nLINE 1: ...')
    exc_text = one_line(exc)
    assert "\n" not in exc_text
    assert exc_text.startswith('relation "x" does not exist LINE 1:')
    assert exc_text.endswith("(SQLSTATE 42P01)")
    assert one_line(RuntimeError("")) == "RuntimeError"


def test_one_line_masks_connection_string_passwords():
    text = one_line(RuntimeError("cannot reach postgresql://ops:hunter2@db/x"))
    assert "hunter2" not in text


def test_with_sqlstate_only_when_there_is_one():
    assert with_sqlstate("boom", "57014") == "boom (SQLSTATE 57014)"
    assert with_sqlstate("boom", None) == "boom"
    assert with_sqlstate("boom", "42P01", on="primary") == "boom (SQLSTATE 42P01, on primary)"
    assert with_sqlstate("boom", None, on="replica1") == "boom (on replica1)"


def test_crypto_without_a_key_provider_names_what_is_missing(monkeypatch):
    from endpoints.core import crypto

    monkeypatch.setattr(crypto, "_keys_provider", None)
    with pytest.raises(RuntimeError, match="no encryption keys configured"):
        crypto.encrypt("a password")


def test_crypto_reads_its_keys_from_the_installed_provider(monkeypatch):
    from cryptography.fernet import Fernet

    from endpoints.core import crypto

    old_key, new_key = Fernet.generate_key().decode(), Fernet.generate_key().decode()
    monkeypatch.setattr(crypto, "_keys_provider", lambda: [old_key])
    token = crypto.encrypt("a password")
    monkeypatch.setattr(crypto, "_keys_provider", lambda: [new_key, old_key])
    assert crypto.decrypt(token).reveal() == "a password"
    monkeypatch.setattr(crypto, "_keys_provider", lambda: [new_key])
    with pytest.raises(crypto.DecryptionError):
        crypto.decrypt(token)
