"""The container image, proved without Docker: everything the Dockerfile copies exists, the
wheel its build stage makes from those files installs into a clean virtual environment, and
`mimic serve` from that environment starts as a non-root user with only the variables the
image sets, answers a C-ECHO over mutual TLS, and stops on SIGTERM with exit code 0."""

from __future__ import annotations

import os
import pwd
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.infra.deployment import ROOT, copy_sources, dockerfile_stages
from tests.support import HOST, associate, client_context, free_port

#: The loopback address and free ports replace the image's 0.0.0.0 and fixed ports.
LOOPBACK_OVERRIDES = ("MIMIC_HOST", "MIMIC_PORT", "MIMIC_OPS_HOST", "MIMIC_OPS_PORT",
                      "MIMIC_DATA_DIR")


def test_every_file_the_dockerfile_copies_exists() -> None:
    sources = [s for stage in dockerfile_stages() for s in copy_sources(stage)]
    assert "pyproject.toml" in sources and "mimic_server" in sources
    for source in sources:
        assert (ROOT / source).exists(), source


def test_the_dockerignore_keeps_what_the_dockerfile_copies() -> None:
    kept = [line[1:].rstrip("/") for line in (ROOT / ".dockerignore").read_text().splitlines()
            if line.startswith("!")]
    for stage in dockerfile_stages():
        for source in copy_sources(stage):
            assert source.rstrip("/") in kept, source


def test_the_runtime_stage_runs_mimic_serve_as_a_non_root_user() -> None:
    runtime = dockerfile_stages()[-1]
    assert runtime.name == "runtime"
    assert runtime.all("USER") == ["10001:10001"]
    assert runtime.all("ENTRYPOINT") == ['["mimic"]'] and runtime.all("CMD") == ['["serve"]']
    assert runtime.instructions[0] == ("FROM", "python:3.11-slim AS runtime")


def _python_for_non_root() -> str:
    """A Python 3.11 the non-root user can run (the test's own may live under /root)."""
    candidates = [os.path.realpath(sys.executable), "/usr/local/bin/python3.11",
                  "/usr/bin/python3.11"]
    for candidate in candidates:
        try:
            check = subprocess.run([candidate, "-c", "import venv"], capture_output=True,
                                   **_non_root())
        except OSError:  # missing, or not executable for the non-root user
            continue
        if check.returncode == 0:
            return candidate
    pytest.skip("no Python 3.11 that a non-root user may run")


@pytest.fixture(scope="module")
def image_venv() -> Iterator[Path]:
    """The wheel built from only the files the Dockerfile copies, installed into a new venv
    that a non-root user can read."""
    root = Path(tempfile.mkdtemp(prefix="mimic-image-"))
    root.chmod(0o755)
    try:
        context = root / "context"
        context.mkdir()
        for source in copy_sources(dockerfile_stages()[0]):
            src = ROOT / source
            if src.is_dir():
                shutil.copytree(src, context / source,
                                ignore=shutil.ignore_patterns("__pycache__", "*.pyc"))
            else:
                shutil.copy2(src, context / source)
        wheels = root / "wheels"
        subprocess.run(
            [sys.executable, "-m", "pip", "wheel", "--quiet", "--no-deps",
             "--wheel-dir", str(wheels), "."],
            cwd=context, check=True, timeout=600,
        )
        (wheel,) = wheels.glob("mimic_server-*.whl")
        venv = root / "venv"
        subprocess.run([_python_for_non_root(), "-m", "venv", str(venv)], check=True,
                       timeout=120)
        # As the runtime stage installs it: with the verified versions.
        subprocess.run([str(venv / "bin" / "pip"), "install", "--quiet", "-c",
                        str(ROOT / "constraints.txt"), str(wheel)], check=True, timeout=600)
        subprocess.run(["chmod", "-R", "a+rX", str(root)], check=True)
        yield venv
    finally:
        shutil.rmtree(root, ignore_errors=True)


def _non_root() -> dict:
    """Popen arguments that drop root (as on CI) to ``nobody``; others already are not root."""
    if os.geteuid() != 0:
        return {}
    nobody = pwd.getpwnam("nobody")
    return {"user": nobody.pw_uid, "group": nobody.pw_gid, "extra_groups": []}


def test_the_installed_wheel_serves_as_a_non_root_user_with_the_image_env(
    image_venv: Path,
) -> None:
    image_env = dockerfile_stages()[-1].env
    data = Path(tempfile.mkdtemp(prefix="mimic-image-data-"))
    port, ops_port = free_port(), free_port()
    env = {k: v for k, v in image_env.items() if k not in {"PATH", "VIRTUAL_ENV"}}
    env.update(
        PATH=f"{image_venv / 'bin'}:/usr/local/bin:/usr/bin:/bin",
        VIRTUAL_ENV=str(image_venv),
        MIMIC_HOST=HOST,
        MIMIC_PORT=str(port),
        MIMIC_OPS_HOST=HOST,
        MIMIC_OPS_PORT=str(ops_port),
        MIMIC_DATA_DIR=str(data),
    )
    assert set(env) - set(image_env) == set()  # nothing beyond what the image sets
    assert {k for k in image_env if k.startswith("MIMIC_")} >= set(LOOPBACK_OVERRIDES)
    if os.geteuid() == 0:
        nobody = pwd.getpwnam("nobody")
        os.chown(data, nobody.pw_uid, nobody.pw_gid)
    log = data.parent / f"{data.name}.log"
    with open(log, "wb") as out:
        proc = subprocess.Popen([str(image_venv / "bin" / "mimic"), "serve"], env=env,
                                stdout=out, stderr=subprocess.STDOUT, cwd=data, **_non_root())
    try:
        deadline = time.monotonic() + 60
        while '"listening"' not in log.read_text(errors="replace"):
            assert proc.poll() is None, log.read_text(errors="replace")
            assert time.monotonic() < deadline, log.read_text(errors="replace")
            time.sleep(0.2)
        assert str(image_venv) not in sys.executable
        certs = data / "certs"
        ctx = client_context(certs / "clients" / "modality1" / "client.pem",
                             certs / "clients" / "modality1" / "client.key",
                             certs / "ca" / "ca.pem")
        assoc = associate(port, ctx)
        assert assoc.is_established
        status = assoc.send_c_echo()
        assoc.release()
        assert status.Status == 0x0000
        owner = pwd.getpwuid((data / "index.sqlite3").stat().st_uid).pw_name
        assert owner != "root"
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(60) == 0, log.read_text(errors="replace")
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        shutil.rmtree(data, ignore_errors=True)
        log.unlink(missing_ok=True)
