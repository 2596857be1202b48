"""Release files: the npm package beside the Python one, and what the wheel ships.

Building the sdist and the wheel, ``twine check`` and installing the wheel in a clean
virtual environment are done by ``.ci/run`` (slow); these checks are fast.
"""

from __future__ import annotations

import ast
import fnmatch
import json
import os
import re
import subprocess
import sys
from importlib import metadata
from pathlib import Path
from typing import Any

from packaging.requirements import Requirement
from packaging.utils import canonicalize_name
from test_examples import WAIT_SECONDS

import wsgi_longpoll

ROOT = Path(__file__).resolve().parent.parent
STATIC = ROOT / "wsgi_longpoll" / "static"


def semver(pep440: str) -> str:
    """A PEP 440 release as npm's semver: ``0.1.0.dev0`` -> ``0.1.0-dev.0``."""
    match = re.fullmatch(r"(\d+\.\d+\.\d+)(?:\.?(dev|a|b|rc)(\d+))?", pep440)
    assert match, f"no semver form for {pep440!r}"
    release, kind, number = match.groups()
    if kind is None:
        return release
    label = {"dev": "dev", "a": "alpha", "b": "beta", "rc": "rc"}[kind]
    return f"{release}-{label}.{number}"


def test_semver_conversion() -> None:
    assert semver("1.2.3") == "1.2.3"
    assert semver("0.1.0.dev0") == "0.1.0-dev.0"
    assert semver("2.0.0rc1") == "2.0.0-rc.1"


def package_json() -> dict[str, object]:
    document = json.loads((STATIC / "package.json").read_text())
    assert isinstance(document, dict)
    return document


def test_npm_version_is_the_python_version() -> None:
    version = package_json()["version"]
    assert version == semver(wsgi_longpoll.__version__)
    script = (STATIC / "longpoll.global.js").read_text()
    assert f'const VERSION = "{version}";' in script


def test_npm_package_names_its_files() -> None:
    document = package_json()
    files = document["files"]
    assert isinstance(files, list)
    for name in files:
        assert (STATIC / name).is_file(), name
    assert document["types"] == "./longpoll.d.ts"
    assert document["license"] == "MIT"


def test_declarations_cover_the_public_api() -> None:
    script = (STATIC / "longpoll.global.js").read_text()
    declarations = (STATIC / "longpoll.d.ts").read_text()
    exported = re.search(r"root\.WsgiLongpoll = \{(.*?)\};", script, re.S)
    assert exported
    names = re.findall(r"(\w+):", exported[1])
    assert names == ["VERSION", "Backoff", "LongpollClient", "PublishError",
                     "SubscriptionRejected"]
    for name in names:
        assert re.search(rf"export (?:class|const) {name}\b", declarations), name
        assert f"  {name}: typeof {name};" in declarations
    client = script[script.index("class LongpollClient"):script.index("root.WsgiLongpoll")]
    methods = set(re.findall(r"^    (?:async |get )?([a-z]\w*)\(", client, re.M))
    assert methods >= {"start", "stop", "publish", "cursor", "state"}
    for method in methods - {"constructor"}:
        assert re.search(rf"\b{method}[(:]", declarations), method
    block = script[script.index("   * Options:"):script.index("class LongpollClient")]
    options = set(re.findall(r"^\s+\*   (\w+)[(,\s]", block, re.M))
    options |= set(re.findall(r"^\s+\*   \w+, (\w+)\s", block, re.M))  # "username, password"
    assert {"subscribeUrl", "onGap", "storageKey", "fetch"} <= options
    for option in options:
        assert re.search(rf"\b{option}\?*:", declarations), option


def package_data_patterns() -> list[str]:
    tree = ast.parse((ROOT / "setup.py").read_text())
    for node in ast.walk(tree):
        if isinstance(node, ast.keyword) and node.arg == "package_data":
            value = ast.literal_eval(node.value)
            assert isinstance(value, dict)
            return list(value["wsgi_longpoll"])
    raise AssertionError("setup.py has no package_data")


def test_package_data_ships_the_static_files() -> None:
    patterns = package_data_patterns()
    for path in STATIC.rglob("*"):
        if path.is_file():
            relative = path.relative_to(ROOT / "wsgi_longpoll").as_posix()
            assert any(fnmatch.fnmatch(relative, pattern) for pattern in patterns), relative


def test_license_is_mit_and_named_in_setup() -> None:
    assert (ROOT / "LICENSE").read_text().startswith("MIT License")
    setup = (ROOT / "setup.py").read_text()
    assert 'license_files=["LICENSE"]' in setup
    assert 'license_expression="MIT"' in setup  # PEP 639: replaces the License classifier
    for version in ("3.10", "3.11", "3.12", "3.13"):
        assert f'"Programming Language :: Python :: {version}"' in setup


README = (ROOT / "README.md").read_text()


def test_readme_first_screen_tells_make_and_pip_users_what_to_run() -> None:
    first_screen = README[:README.index("\n## ")]
    assert "make serve" in first_screen and "make test" in first_screen
    for command in ("pip install wsgi_longpoll", "[flask]", "[django]", "[redis]"):
        assert command in first_screen, command


def test_readme_links_are_absolute() -> None:
    """An index page renders the README away from the repository: relative links break."""
    assert re.findall(r"\]\((?!https://)([^)]*)\)", README) == []


def test_a_missing_extra_names_the_pip_command(tmp_path: Path) -> None:
    """Importing an integration without its framework says which extra to install."""
    blocker = tmp_path / "sitecustomize.py"
    blocker.write_text(
        "import sys\n"
        "class Block:\n"
        "    def find_spec(self, name, path=None, target=None):\n"
        "        if name.split('.')[0] in ('flask', 'prometheus_client'):\n"
        "            raise ImportError(f'no {name} here')\n"
        "sys.meta_path.insert(0, Block())\n"
    )
    for module, extra in (("flask", "flask"), ("prometheus", "prometheus")):
        done = subprocess.run(
            [sys.executable, "-c", f"import wsgi_longpoll.contrib.{module}"],
            env={**os.environ, "PYTHONPATH": str(tmp_path)}, capture_output=True, text=True,
            timeout=WAIT_SECONDS, check=False,
        )
        assert done.returncode == 1
        assert f"pip install 'wsgi_longpoll[{extra}]'" in done.stderr


def setup_requirements() -> tuple[list[str], dict[str, list[str]]]:
    """``install_requires`` and ``extras_require`` as setup.py declares them."""
    tree = ast.parse((ROOT / "setup.py").read_text())
    found: dict[str, Any] = {}
    for node in ast.walk(tree):
        if isinstance(node, ast.keyword) and node.arg in ("install_requires", "extras_require"):
            found[node.arg] = ast.literal_eval(node.value)
    return found["install_requires"], found["extras_require"]


def installed_closure(requirements: list[str]) -> set[str]:
    """The distributions *requirements* bring, with their dependencies (and the extras'
    dependencies they ask for), as installed here; by normalised name."""
    pending = [Requirement(text) for text in requirements]
    seen: set[tuple[str, frozenset[str]]] = set()
    names: set[str] = set()
    while pending:
        requirement = pending.pop()
        name = canonicalize_name(requirement.name)
        key = (name, frozenset(requirement.extras))
        if key in seen:
            continue
        seen.add(key)
        names.add(name)
        try:
            declared = metadata.distribution(requirement.name).requires or []
        except metadata.PackageNotFoundError:
            continue  # not installed: nothing of it can be imported either
        for text in declared:
            child = Requirement(text)
            wanted = requirement.extras or {""}
            if child.marker is None or any(child.marker.evaluate({"extra": extra})
                                           for extra in wanted):
                pending.append(child)
    return names


def test_the_gunicorn_extra_installs_what_the_worker_imports() -> None:
    """``pip install 'wsgi_longpoll[gunicorn]'`` then ``-k ...LongpollWorker``: importing the
    worker (and gunicorn's gevent worker under it) needs nothing but the package's
    requirements and the extra's, with what they depend on; every other installed
    distribution is hidden from the import."""
    core, extras = setup_requirements()
    assert any(canonicalize_name(Requirement(text).name) == "packaging"
               for text in extras["gunicorn"])
    allowed = installed_closure([*core, *extras["gunicorn"]]) | {"wsgi-longpoll"}
    hidden = sorted(
        module for module, distributions in metadata.packages_distributions().items()
        if not {canonicalize_name(name) for name in distributions} & allowed
    )
    assert "flask" in hidden  # the check hides what the extra does not bring
    script = (
        "import json, sys\n"
        "hidden = set(json.loads(sys.argv[1]))\n"
        "class Hide:\n"
        "    def find_spec(self, name, path=None, target=None):\n"
        "        if name.partition('.')[0] in hidden:\n"
        "            raise ModuleNotFoundError(f'No module named {name!r}', name=name)\n"
        "sys.meta_path.insert(0, Hide())\n"
        "import gunicorn.app.wsgiapp, gunicorn.workers.ggevent\n"
        "import wsgi_longpoll.server.gunicorn\n"
    )
    done = subprocess.run([sys.executable, "-c", script, json.dumps(hidden)],
                          capture_output=True, text=True, timeout=WAIT_SECONDS, check=False)
    assert done.returncode == 0, done.stderr
