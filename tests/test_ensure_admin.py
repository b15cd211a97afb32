"""manage.py ensure_admin: the admin user that make run creates and prints."""

from __future__ import annotations

import io
import re
from pathlib import Path

import pytest
from django.contrib.auth import get_user_model
from django.core.management import call_command
from django.test import override_settings

pytestmark = pytest.mark.django_db


def _ensure_admin(var_dir: Path, password: str = "", user: str = "admin") -> str:
    out = io.StringIO()
    with override_settings(
        PGWARDEN_VAR_DIR=var_dir, PGWARDEN_ADMIN_PASSWORD=password, PGWARDEN_ADMIN_USER=user
    ):
        call_command("ensure_admin", url="http://127.0.0.1:8123/admin/", stdout=out)
    return out.getvalue()


def _shown_password(output: str) -> str:
    match = re.search(r"password: (\S+)", output)
    assert match, output
    return match.group(1)


def test_creates_a_superuser_with_a_generated_password_kept_private(tmp_path: Path) -> None:
    output = _ensure_admin(tmp_path)

    password = _shown_password(output)
    assert "http://127.0.0.1:8123/admin/" in output
    assert "user: admin" in output
    user = get_user_model().objects.get(username="admin")
    assert user.is_superuser
    assert user.is_staff
    assert user.check_password(password)
    stored = tmp_path / "admin-password"
    assert stored.read_text().strip() == password
    assert stored.stat().st_mode & 0o777 == 0o600


def test_a_second_run_shows_the_same_password_and_creates_no_user(tmp_path: Path) -> None:
    first = _shown_password(_ensure_admin(tmp_path))

    second = _shown_password(_ensure_admin(tmp_path))

    assert second == first
    assert get_user_model().objects.count() == 1


def test_the_configured_password_is_used_and_resets_a_changed_one(tmp_path: Path) -> None:
    _ensure_admin(tmp_path, password="first-chosen-password")
    user = get_user_model().objects.get(username="admin")
    user.set_password("changed-by-someone")
    user.save()

    output = _ensure_admin(tmp_path, password="first-chosen-password")

    assert _shown_password(output) == "first-chosen-password"
    user.refresh_from_db()
    assert user.check_password("first-chosen-password")
    assert not (tmp_path / "admin-password").exists()


def test_a_password_changed_since_is_not_shown(tmp_path: Path) -> None:
    _ensure_admin(tmp_path)
    user = get_user_model().objects.get(username="admin")
    user.set_password("operator-picked-this")
    user.save()

    output = _ensure_admin(tmp_path)

    assert "operator-picked-this" not in output
    assert "unchanged since it was set" in output
    user.refresh_from_db()
    assert user.check_password("operator-picked-this")


def test_an_existing_non_staff_user_is_made_an_admin(tmp_path: Path) -> None:
    get_user_model().objects.create_user("ops", password="ops-password-123")

    _ensure_admin(tmp_path, password="ops-password-123", user="ops")

    user = get_user_model().objects.get(username="ops")
    assert user.is_active
    assert user.is_staff
    assert user.is_superuser
