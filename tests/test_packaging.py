"""The owner's layout installs `backends/` as `flask_polysms.backends`, in a wheel too."""

from __future__ import annotations

import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent


@pytest.mark.slow
def test_wheel_contains_the_backends_and_data(tmp_path):
    subprocess.run(
        [sys.executable, "-m", "build", "--wheel", "--no-isolation", "--outdir", str(tmp_path)],
        cwd=ROOT,
        check=True,
        capture_output=True,
    )
    (wheel,) = tmp_path.glob("flask_polysms-*.whl")
    names = set(zipfile.ZipFile(wheel).namelist())
    for required in (
        "flask_polysms/__init__.py",
        "flask_polysms/backends/__init__.py",
        "flask_polysms/backends/memory.py",
        "flask_polysms/backends/peewee/__init__.py",
        "flask_polysms/backends/peewee/store.py",
        "flask_polysms/backends/peewee/postgres.py",
        "flask_polysms/web/api/__init__.py",
        "flask_polysms/services/lifecycle.py",
        "flask_polysms/ports/store.py",
        "flask_polysms/testing/emulator.py",
        "flask_polysms/data/countries.json",
    ):
        assert required in names, required
    assert not any(name.startswith("backends/") for name in names)


@pytest.mark.slow
def test_regular_install_in_a_fresh_venv_imports_the_peewee_backend(tmp_path):
    venv = tmp_path / "venv"
    subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True)
    python = venv / "bin" / "python"
    # The dependencies come from this venv (appended after the new venv's own site-packages, so
    # the freshly installed flask_polysms is the one imported).
    site = subprocess.run(
        [str(python), "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
        capture_output=True,
        text=True,
        check=True,
    ).stdout.strip()
    deps = [p for p in sys.path if p.endswith("site-packages")]
    Path(site, "test-deps.pth").write_text("\n".join(deps) + "\n")
    install = subprocess.run(
        [str(python), "-m", "pip", "install", "-q", "--no-deps", str(ROOT)],
        capture_output=True,
        text=True,
    )
    assert install.returncode == 0, install.stderr
    # Run from outside the checkout: with the repo root first on sys.path the source tree would
    # shadow the installed package.
    result = subprocess.run(
        [str(python), "-c", "import flask_polysms.backends.peewee as p; print(p.__file__)"],
        cwd=tmp_path,
        capture_output=True,
        text=True,
    )
    assert result.returncode == 0, result.stderr
    assert str(venv) in result.stdout


def _setup_cfg_requirements() -> list:
    """install_requires and the [test] extra of setup.cfg, parsed."""
    import configparser

    from packaging.requirements import Requirement

    config = configparser.ConfigParser()
    config.read(ROOT / "setup.cfg")
    lines = config["options"]["install_requires"].splitlines()
    lines += config["options.extras_require"]["test"].splitlines()
    return [Requirement(line) for line in lines if line.strip()]


def _floor(requirement):
    """The lowest version a requirement allows: its ``>=`` or ``==`` bound."""
    from packaging.version import Version

    bounds = [Version(s.version) for s in requirement.specifier if s.operator in (">=", "==")]
    return max(bounds) if bounds else None


def test_lowest_constraints_pin_every_requirement_at_its_floor():
    """.ci/lowest-constraints.txt (the CI run at the floors) and setup.cfg's floors agree."""
    from packaging.requirements import Requirement
    from packaging.utils import canonicalize_name
    from packaging.version import Version

    pinned = {}
    for line in (ROOT / ".ci" / "lowest-constraints.txt").read_text().splitlines():
        if line.strip() and not line.startswith("#"):
            constraint = Requirement(line)
            (spec,) = constraint.specifier
            assert spec.operator == "==", line
            pinned[canonicalize_name(constraint.name)] = spec.version
    required = {}
    for requirement in _setup_cfg_requirements():
        floor = _floor(requirement)
        assert floor is not None, f"{requirement} has no lower bound"
        required[canonicalize_name(requirement.name)] = floor
    assert set(pinned) == set(required)
    for name, floor in required.items():
        assert floor == Version(pinned[name]), f"{name}: setup.cfg {floor}, pinned {pinned[name]}"
