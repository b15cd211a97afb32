"""The fleet dashboard (staff only), under /admin/fleet/ (included by project.urls)."""

from django.contrib import admin
from django.urls import URLPattern, path

from endpoints.web import dashboard

app_name = "fleet"

urlpatterns: list[URLPattern] = [
    path("", admin.site.admin_view(dashboard.dashboard), name="dashboard"),
    path("data.json", dashboard.dashboard_data, name="data"),
]
