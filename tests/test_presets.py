"""Execution presets (issue 15, item 7): documented values the cluster form fills in."""

from __future__ import annotations

from typing import Any

import pytest
from django.db import models
from django.forms import ModelForm, modelform_factory

from endpoints.core.presets import PRESETS, Preset, preset
from endpoints.forms import ClusterForm
from endpoints.models import Cluster
from tests.helpers import ROOT

PRESET_FIELDS = sorted(PRESETS[0].values)


def test_every_preset_sets_the_same_fields() -> None:
    assert [sorted(p.values) for p in PRESETS] == [PRESET_FIELDS] * len(PRESETS)
    assert [p.name for p in PRESETS] == ["fast", "balanced", "robust"]


def test_balanced_is_exactly_the_models_defaults() -> None:
    defaults = {name: _field(name).default for name in PRESET_FIELDS}
    assert dict(preset("balanced").values) == defaults


def _field(name: str) -> models.Field[Any, Any]:
    field = Cluster._meta.get_field(name)
    assert isinstance(field, models.Field)
    return field


@pytest.mark.parametrize("chosen", PRESETS, ids=lambda p: p.name)
def test_every_preset_passes_the_models_own_validation(chosen: Preset) -> None:
    Cluster(name="preset-check", **chosen.values).clean_fields()


def test_an_unknown_preset_names_the_known_ones() -> None:
    with pytest.raises(ValueError, match="unknown preset 'turbo'; expected one of fast, balanced"):
        preset("turbo")


def _form(data: dict[str, object], instance: Cluster) -> ModelForm[Cluster]:
    form_class = modelform_factory(Cluster, form=ClusterForm, fields=["name", *PRESET_FIELDS])
    return form_class(data=data, instance=instance)


def _posted(cluster: Cluster) -> dict[str, object]:
    return {"name": cluster.name, **{f: getattr(cluster, f) for f in PRESET_FIELDS}}


@pytest.mark.django_db
def test_choosing_a_preset_in_the_form_stores_its_values_over_what_was_typed() -> None:
    cluster = Cluster.objects.create(name="tuned")
    data = {**_posted(cluster), "preset": "robust", "retry_max_attempts": "999"}

    form = _form(data, cluster)
    assert form.is_valid(), form.errors
    form.save()

    cluster.refresh_from_db()
    assert {f: getattr(cluster, f) for f in PRESET_FIELDS} == dict(preset("robust").values)


@pytest.mark.django_db
def test_without_a_preset_the_typed_values_are_kept_and_checked() -> None:
    cluster = Cluster.objects.create(name="typed")
    ok = _form({**_posted(cluster), "retry_max_attempts": "7"}, cluster)
    assert ok.is_valid(), ok.errors
    ok.save()
    cluster.refresh_from_db()
    assert cluster.retry_max_attempts == 7

    refused = _form({**_posted(cluster), "retry_max_attempts": "999"}, cluster)
    assert not refused.is_valid()
    assert "retry_max_attempts" in refused.errors


def test_the_readme_table_is_the_presets() -> None:
    readme = (ROOT / "README.md").read_text()
    for field in PRESET_FIELDS:
        row = f"| `{field}` | " + " | ".join(str(p.values[field]) for p in PRESETS) + " |"
        assert row in readme, f"README's preset table: {row}"
