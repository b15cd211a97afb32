"""URL configuration: the admin is the operator's interface."""

from django.contrib import admin
from django.urls import include, path
from django.views.generic import RedirectView

admin.site.site_header = "pgwarden"
admin.site.site_title = "pgwarden"
admin.site.index_title = "PostgreSQL fleet"
# The same dash as the custom columns (latency, lag) show for "no value".
admin.site.empty_value_display = "—"

urlpatterns = [
    path("", RedirectView.as_view(url="/admin/", permanent=False)),
    path("admin/", admin.site.urls),
    path("", include("endpoints.urls")),
]
