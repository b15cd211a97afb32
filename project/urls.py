"""URL configuration: the admin is the operator's interface."""

from django.contrib import admin
from django.urls import include, path
from django.views.generic import RedirectView

admin.site.site_header = "pgwarden"
admin.site.site_title = "pgwarden"
admin.site.index_title = "PostgreSQL fleet"
# The same dash as the custom columns (latency, lag) show for "no value".
admin.site.empty_value_display = "—"
# The admin index links the fleet dashboard. Its template extends Django's admin index: a
# file named admin/index.html in the endpoints app would be shadowed by
# django.contrib.admin's, which comes first in INSTALLED_APPS.
admin.site.index_template = "admin/pgwarden_index.html"

urlpatterns = [
    path("", RedirectView.as_view(url="/admin/", permanent=False)),
    # Before the admin's catch-all: the dashboard lives under /admin/ (staff only).
    path("admin/fleet/", include("endpoints.dashboard_urls")),
    path("admin/", admin.site.urls),
    path("", include("endpoints.urls")),
]
