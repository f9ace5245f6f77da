"""What each process of ``mimic serve`` and ``mimic web`` imports before it serves, and the
schema check a worker makes without Alembic.

A start is seconds of imports on a small machine, paid again by every worker process and
every replacement of one: the supervisor must not import the DICOM stack (it serves none),
and a worker not Alembic (its supervisor prepared the schema). Only what is imported is
asserted here, never a time.
"""

from __future__ import annotations

import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from mimic_server.errors import ConfigurationError
from mimic_server.index import schema
from mimic_server.index.engine import create_index_engine


def _imported(code: str) -> set[str]:
    run = subprocess.run(
        [sys.executable, "-c", code + "\nimport sys; print(' '.join(sys.modules))"],
        capture_output=True, text=True, timeout=120, check=True,
    )
    return set(run.stdout.split())


#: What a supervisor or parent of workers, which serves no DICOM and builds no app, must
#: never hold: the DICOM stack (numpy comes with pydicom) and the archive's openers.
THE_ARCHIVE = frozenset({"pynetdicom", "pydicom", "numpy", "mimic_server.resources"})


def test_the_supervisor_does_not_import_the_dicom_stack_before_its_workers_start() -> None:
    # What `mimic serve` has imported when it spawns its workers: the command line, the
    # supervisor (its ops endpoints included).
    modules = _imported("import mimic_server.cli, mimic_server.workers.supervisor")
    assert not {"pynetdicom", "pydicom", "sqlalchemy", "alembic", "mimic_server.app"} & modules


def test_the_supervisor_never_imports_the_dicom_stack(tmp_path: Path) -> None:
    # What it holds for its lifetime once its workers serve: its own start run for real (the
    # development PKI, the index migrated, the object store opened), with the workers'
    # processes left out, then the readiness checks it answers for the server. Through
    # resources.py and the index package it had imported pydicom (with numpy and the pixel
    # plugins) and the archive's modules: 34 MB of its resident memory.
    modules = _imported(textwrap.dedent(f"""
        import types
        import mimic_server.cli
        from mimic_server.config import Settings
        from mimic_server.workers.supervisor import Supervisor
        Supervisor._spawn = lambda self, slot, release=True: setattr(
            slot, "run", types.SimpleNamespace(pidfd=None, go_fd=None))
        Supervisor._release = lambda self, run: None
        Supervisor._await_ready = lambda self, slots: None
        settings = Settings(data_dir={str(tmp_path)!r}, port=0, ops_port=0)
        supervisor = Supervisor(settings, {{}}, 2)
        supervisor._start()
        assert supervisor.first_start is not None
        assert supervisor._index_answers() == "sqlite answers"
        assert supervisor._store_answers() == "answers"
        supervisor._close()
    """))
    assert {"sqlalchemy", "alembic", "cryptography", "mimic_server.backends"} <= modules
    assert not (THE_ARCHIVE | {"mimic_server.app", "mimic_server.index.repository"}) & modules


def test_the_web_parent_never_builds_the_app(tmp_path: Path) -> None:
    # `mimic web` with workers, through its command: the settings checked, the index
    # migrated, the port bound, the workers' environment set; uvicorn's supervisor, which
    # would spawn the workers, left out. The parent had imported webapp.py, the app and the
    # archive with it: 38 MB of its resident memory.
    modules = _imported(textwrap.dedent(f"""
        import os
        from mimic_server import cli
        from mimic_server.web import parent, workers
        ran = []
        workers.WebWorkers.run = lambda self: ran.append(self.config.workers)
        cli.main(["web", "--data-dir", {str(tmp_path)!r}, "--web-auth", "none",
                  "--web-host", "127.0.0.1", "--web-port", "0", "--web-workers", "2",
                  "--web-roles", '{{"Radiologist": ["find"]}}'], standalone_mode=False)
        assert ran == [2]
        assert os.environ[parent.SCHEMA_REVISION_VARIABLE]
    """))
    assert {"sqlalchemy", "alembic", "uvicorn", "mimic_server.web.parent"} <= modules
    assert not (THE_ARCHIVE | {"mimic_server.webapp", "starlette.applications"}) & modules


def test_a_worker_imports_neither_alembic_nor_hashes_a_passcode() -> None:
    modules = _imported(
        "import mimic_server.app\n"
        "from mimic_server.security import users\n"
        "assert users._dummy_hash.cache_info().currsize == 0"
    )
    assert "pynetdicom" in modules and "alembic" not in modules


def test_a_web_worker_opens_its_app_without_alembic(tmp_path: Path) -> None:
    # `mimic web`'s parent prepares the schema and hands its revision over in the
    # environment (``SCHEMA_REVISION_VARIABLE``); the worker's whole app opens on it.
    engine = create_index_engine(f"sqlite:///{tmp_path / 'index.sqlite3'}")
    try:
        schema.upgrade(engine)
    finally:
        engine.dispose()
    head = schema.head_revision()
    modules = _imported(
        "from mimic_server.config import Settings\n"
        "from mimic_server.webapp import WebArchive\n"
        f"archive = WebArchive(Settings(data_dir={str(tmp_path)!r}, web_auth='none', "
        f"web_host='127.0.0.1'), schema_revision={head!r})\n"
        "archive.open()\n"
        "archive.stop()"
    )
    assert "starlette" in modules and "alembic" not in modules


def test_the_schema_a_supervisor_prepared_is_checked_without_alembic(tmp_path: Path) -> None:
    engine = create_index_engine(f"sqlite:///{tmp_path / 'index.sqlite3'}")
    try:
        with pytest.raises(Exception, match="alembic_version"):
            schema.require_revision(engine, "anything")  # no schema at all
        schema.upgrade(engine)
        head = schema.head_revision()
        assert head is not None and schema.current_revision(engine) == head
        schema.require_revision(engine, head)
        with pytest.raises(ConfigurationError, match="run 'mimic db upgrade'") as refused:
            schema.require_revision(engine, "0001")
        assert f"at revision {head}" in str(refused.value)
    finally:
        engine.dispose()
