"""Admin forms: a write-only password and the one-primary rule across an inline formset."""

from __future__ import annotations

from typing import Any

from django import forms
from django.core.exceptions import ValidationError
from django.forms.models import BaseInlineFormSet

from endpoints.core.presets import PRESETS, preset
from endpoints.models import Cluster, Endpoint, Role


class EndpointForm(forms.ModelForm):
    password = forms.CharField(
        label="Password",
        required=False,
        strip=False,
        # render_value=False: the stored password is never sent back to the browser.
        widget=forms.PasswordInput(render_value=False, attrs={"autocomplete": "new-password"}),
        help_text="Write-only: leave blank to keep the stored password. Stored encrypted.",
    )
    clear_password = forms.BooleanField(
        label="Remove password",
        required=False,
        help_text="Connect without a password (trust, peer or certificate authentication).",
    )

    class Meta:
        model = Endpoint
        fields = (
            "cluster",
            "name",
            "host",
            "port",
            "dbname",
            "user",
            "sslmode",
            "sslrootcert",
            "role",
            "enabled",
            "weight",
            "promotion_priority",
            "zone",
            "pool_min_size",
            "pool_max_size",
            "pool_timeout_s",
            "pool_max_idle_s",
            "pool_max_lifetime_s",
        )

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        if self.instance.has_password:
            self.fields["password"].widget.attrs["placeholder"] = "(stored; blank keeps it)"

    def clean(self) -> dict[str, Any]:
        super().clean()
        cleaned = self.cleaned_data
        if cleaned.get("password") and cleaned.get("clear_password"):
            self.add_error("clear_password", "Either set a new password or remove it, not both.")
        return cleaned

    def save(self, commit: bool = True) -> Endpoint:
        endpoint: Endpoint = super().save(commit=False)
        if self.cleaned_data.get("password"):
            endpoint.set_password(self.cleaned_data["password"])
        elif self.cleaned_data.get("clear_password"):
            endpoint.set_password("")
        if commit:
            endpoint.save()
            self.save_m2m()
        return endpoint


def _write_only_password(what: str) -> forms.CharField:
    return forms.CharField(
        label=f"{what} password",
        required=False,
        strip=False,
        # render_value=False: the stored password is never sent back to the browser.
        widget=forms.PasswordInput(render_value=False, attrs={"autocomplete": "new-password"}),
        help_text="Write-only: leave blank to keep the stored password. Stored encrypted.",
    )


class ClusterForm(forms.ModelForm):
    """The cluster, with write-only passwords for the MCP server's assistant roles."""

    assistant_password = _write_only_password("Assistant role")
    assistant_write_password = _write_only_password("Assistant write role")
    preset = forms.ChoiceField(
        label="Preset",
        required=False,
        choices=[("", "(keep the values below)")]
        + [(p.name, f"{p.name}: {p.summary}") for p in PRESETS],
        help_text="Fills the load balancing, timeout, retry and circuit breaker fields with "
        "the preset's values when saved (the README's table lists them), replacing what is "
        "typed below.",
    )

    class Meta:
        model = Cluster
        # The admin passes the fields of its fieldsets, which replace these.
        fields = ("name", "assistant_user", "assistant_write_user")

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        for writes, field in ((False, "assistant_password"), (True, "assistant_write_password")):
            role = self.instance.assistant_role(writes=writes)
            if role is not None and role.password_encrypted:
                self.fields[field].widget.attrs["placeholder"] = "(stored; blank keeps it)"

    def clean(self) -> dict[str, Any]:
        super().clean()
        cleaned = self.cleaned_data
        if cleaned.get("preset"):
            # Saved from cleaned_data by the ModelForm once clean() returns.
            cleaned.update(preset(cleaned["preset"]).values)
            for field in preset(cleaned["preset"]).values:
                self.errors.pop(field, None)  # a value replaced by the preset's is no error
        for writes, user_field, password_field in _ASSISTANT_FIELDS:
            user, password = cleaned.get(user_field), cleaned.get(password_field)
            if password and not user:
                self.add_error(user_field, "Name the role this password belongs to.")
            elif not user:
                # No role, no password: cleared before the model validates the pair.
                self.instance.set_assistant_password("", writes=writes)
            elif password:
                self.instance.set_assistant_password(password, writes=writes)
        return cleaned


# (writes, role field, password field) of the cluster's two assistant roles.
_ASSISTANT_FIELDS = (
    (False, "assistant_user", "assistant_password"),
    (True, "assistant_write_user", "assistant_write_password"),
)


class EndpointInlineFormSet(BaseInlineFormSet):
    """Checks "one enabled primary" over the submitted forms, not row by row.

    Row by row, moving the primary from one endpoint to another in a single
    save would be refused (the other row is still primary in the database).
    """

    def add_fields(self, form: forms.ModelForm, index: int | None) -> None:
        # Called for every form the formset builds, before any of them is validated.
        super().add_fields(form, index)
        form.instance.primary_checked_by_formset = True

    def clean(self) -> None:
        super().clean()
        primaries = [
            form.cleaned_data.get("name") or "(new)"
            for form in self.forms
            if self._takes_primary(form)
        ]
        if len(primaries) > 1:
            raise ValidationError(
                f"A cluster has at most one enabled primary; this form makes "
                f"{', '.join(repr(name) for name in primaries)} primaries. Make all but one a "
                "replica or disable them."
            )

    # While True, initial_forms lists the forms that take the primary role last.
    _primary_last = False

    @property
    def initial_forms(self) -> list[forms.Form]:
        initial = super().initial_forms
        return sorted(initial, key=self._takes_primary) if self._primary_last else initial

    def save_existing_objects(self, commit: bool = True) -> list[Endpoint]:
        # Release the primary slot before taking it, so the database constraint holds
        # after every single row is written. Only the iteration order changes: self.forms
        # keeps its order, because deleted_forms (which rows to delete) indexes into it.
        self._primary_last = True
        try:
            return super().save_existing_objects(commit)
        finally:
            self._primary_last = False

    def _takes_primary(self, form: forms.Form) -> bool:
        data = getattr(form, "cleaned_data", None) or {}
        return (
            not data.get("DELETE", False)
            and data.get("role") == Role.PRIMARY
            and bool(data.get("enabled"))
        )
