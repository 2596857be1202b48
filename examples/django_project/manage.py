#!/usr/bin/env python
"""Django's command-line utility for the long-polling example project.

See ``longpoll_site/__init__.py`` for how to run it.
"""

import os
import sys


def main() -> None:
    os.environ.setdefault("DJANGO_SETTINGS_MODULE", "longpoll_site.settings")
    from django.core.management import execute_from_command_line

    execute_from_command_line(sys.argv)


if __name__ == "__main__":
    main()
