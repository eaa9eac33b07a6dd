"""The migration scripts ship with the package: the runner reads them from the package's own
folder, and the wheel holds every one of them.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
from faults_migrations_support import EVERY_MIGRATION


def test_the_runner_reads_the_scripts_of_the_package():
    from flask_polysms.backends import peewee_migrations

    folder = Path(peewee_migrations.DIRECTORY)
    assert folder == Path(peewee_migrations.__file__).parent
    assert sorted(p.name for p in folder.glob("[0-9]*.py")) == [
        f"{name}.py" for name in EVERY_MIGRATION
    ]


@pytest.mark.slow
def test_the_wheel_ships_every_script(tmp_path):
    """The scripts are files the runner finds in the installed package: a wheel without them
    would install a store that creates no tables."""
    import zipfile

    root = Path(__file__).resolve().parents[1]
    subprocess.run(
        [sys.executable, "-m", "build", "--wheel", "--no-isolation", "--outdir", str(tmp_path)],
        cwd=root,
        check=True,
        capture_output=True,
    )
    (wheel,) = tmp_path.glob("flask_polysms-*.whl")
    names = set(zipfile.ZipFile(wheel).namelist())
    folder = "flask_polysms/backends/peewee_migrations/"
    for name in ("__init__", "frozen", *EVERY_MIGRATION):
        assert f"{folder}{name}.py" in names, name
