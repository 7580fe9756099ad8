"""A live admin for Article, the way users switch it on."""

from django.contrib import admin

from django_broadcast.contrib.admin import LiveModelAdmin

from .models import Article

admin.site.register(Article, LiveModelAdmin)
