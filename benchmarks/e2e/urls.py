"""No HTTP views."""

urlpatterns: list[object] = []
