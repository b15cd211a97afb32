"""Operations endpoints: Prometheus metrics and health checks for load balancers."""

from django.urls import URLPattern, path

from endpoints.web import views

urlpatterns: list[URLPattern] = [
    path("metrics", views.metrics_view, name="metrics"),
    path("healthz", views.healthz, name="healthz"),
    path("readyz", views.readyz, name="readyz"),
    # str, not slug: any name reaches the view, which answers an unknown one in JSON.
    path("clusters/<str:name>/primary", views.cluster_primary, name="cluster-primary"),
    path("clusters/<str:name>/replica", views.cluster_replica, name="cluster-replica"),
]
