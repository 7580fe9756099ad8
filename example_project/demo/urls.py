"""The page and the publishing view."""

from django.urls import path

from . import views

urlpatterns = [
    path("", views.index, name="index"),
    path("publish/", views.publish, name="publish"),
]
