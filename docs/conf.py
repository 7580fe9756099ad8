"""Sphinx configuration of the django_broadcast documentation."""

import os
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "docs" / "_ext"))
os.environ.setdefault("DJANGO_SETTINGS_MODULE", "tests.settings")

import django  # noqa: E402

django.setup()

project = "django_broadcast"
author = "the django_broadcast developers"
copyright = "2026, the django_broadcast developers"
from django_broadcast import __version__ as release  # noqa: E402

version = release

extensions = ["sphinx.ext.autodoc", "sphinx.ext.viewcode", "broadcast_features"]
autodoc_member_order = "bysource"
autodoc_typehints = "description"
html_theme = "furo"
html_title = f"django_broadcast {release}"
exclude_patterns = ["_build"]
nitpicky = False
