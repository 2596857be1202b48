"""The Django project's WSGI application (a project's ``wsgi.py``)."""

from __future__ import annotations

import os

from django.core.wsgi import get_wsgi_application

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "protocol_apps.django_settings")

application = get_wsgi_application()
