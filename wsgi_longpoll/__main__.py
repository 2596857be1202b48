"""``python -m wsgi_longpoll serve`` runs the standalone server."""

import sys

from .cli import main

sys.exit(main())
