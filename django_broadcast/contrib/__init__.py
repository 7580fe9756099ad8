"""Optional apps built on django_broadcast; each is added to ``INSTALLED_APPS`` alone."""
