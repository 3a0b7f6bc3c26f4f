"""requirements.lock is the one install source: it must pin what pyproject.toml declares.

These checks read the two files (and the installed metadata of the pinned versions); they never
ask a registry what it serves today, so they give the same answer on any day.
"""

import tomllib
from importlib import metadata

from packaging.requirements import Requirement
from packaging.utils import canonicalize_name
from packaging.version import Version
from paths import REPO_ROOT  # tests/ is on sys.path

LOCK = REPO_ROOT / "requirements.lock"
LOCKED_EXTRAS = ("stack", "test", "bench")  # the extras `make lock` passes to pip-compile


def locked_pins() -> dict[str, Version]:
    pins = {}
    for line in LOCK.read_text().splitlines():
        line = line.split("#", 1)[0].strip()
        if not line:
            continue
        assert "==" in line and ";" not in line, f"requirements.lock: not a plain pin: {line!r}"
        name, version = line.split("==")
        pins[canonicalize_name(name)] = Version(version)
    return pins


def declared_requirements() -> list[Requirement]:
    project = tomllib.loads((REPO_ROOT / "pyproject.toml").read_text())["project"]
    texts = list(project["dependencies"])
    for extra in LOCKED_EXTRAS:
        texts += project["optional-dependencies"][extra]
    return [Requirement(text) for text in texts]


def test_the_lock_target_compiles_the_locked_extras():
    """`make lock` asks pip-compile for exactly the extras these checks hold the lock to."""
    recipe = (REPO_ROOT / "Makefile").read_text().split("\nlock:", 1)[1].split("\n\n", 1)[0]
    for extra in LOCKED_EXTRAS:
        assert f"--extra {extra}" in recipe, f"the Makefile's lock target misses --extra {extra}"


def test_every_declared_dependency_is_pinned_within_its_range():
    pins = locked_pins()
    problems = []
    for req in declared_requirements():
        name = canonicalize_name(req.name)
        if name not in pins:
            problems.append(f"{req} is not in requirements.lock")
        elif not req.specifier.contains(pins[name], prereleases=True):
            problems.append(f"{req}: the lock pins {pins[name]}, outside the declared range")
    assert not problems, "requirements.lock is stale; run `make lock`:\n" + "\n".join(problems)


def test_extras_asked_for_are_locked_too():
    """kfp[kubernetes] and cvat-sdk[masks] bring packages of their own; the lock holds them."""
    pins = locked_pins()
    missing = []
    for req in declared_requirements():
        for extra in req.extras:
            for text in metadata.requires(req.name) or []:
                dep = Requirement(text)
                if dep.marker and dep.marker.evaluate({"extra": extra}):
                    if not dep.marker.evaluate({"extra": ""}) and (
                        canonicalize_name(dep.name) not in pins
                    ):
                        missing.append(f"{req.name}[{extra}] needs {dep.name}")
    assert not missing, "requirements.lock is stale; run `make lock`:\n" + "\n".join(missing)


def test_torch_stays_on_the_versions_on_this_machines_disk():
    pins = locked_pins()
    assert pins["torch"] == Version("2.14.1")
    assert pins["torchvision"] == Version("0.29.1")


def test_the_environment_was_installed_from_the_lock():
    """`make install` installs exactly the lock: every pinned package has the pinned version."""
    differ = []
    for name, version in locked_pins().items():
        try:
            installed = Version(metadata.version(name))
        except metadata.PackageNotFoundError:
            differ.append(f"{name}=={version} is not installed")
            continue
        if installed != version:
            differ.append(f"{name}: lock {version}, installed {installed}")
    assert not differ, "reinstall with `make install`:\n" + "\n".join(differ)
