"""The rooms' dependency direction (docs/architecture.md section 1): nothing reaches up."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[2] / "mimic_server"

#: Every room below the front doors (dimse, web), the archive core and the listener.
UPPER = {"archive", "web", "dimse", "net", "app", "cli"}

#: Rooms of pure definitions that import no other room: "*" below still lets a room use them
#: (what an AE title a peer can send is, for the settings and the trust entries alike).
LEAVES = {"ae_titles", "durable_files"}

#: room -> the project rooms it must never import (the front doors, the composition root).
FORBIDDEN = {
    "errors.py": {"*"},
    "ae_titles.py": {"*"},
    "durable_files.py": {"*"},
    "config.py": {"*"},
    "codec": UPPER | {"index", "query", "storage", "certs", "security"},
    "index": UPPER | {"query", "storage", "certs", "security"},
    "query": UPPER | {"storage", "certs", "security"},
    "storage": UPPER | {"index", "query", "certs", "security"},
    "security": UPPER | {"index", "query", "storage", "certs"},
    "certs": UPPER | {"index", "query", "storage"},
    "dimse": {"web", "net", "app", "cli", "config"},
    "polling.py": {"*"},
    "net": {"archive", "web", "dimse", "app", "cli", "index", "query", "storage"},
    "archive": {"dimse", "net", "web", "app", "cli", "certs"},
    "web": {"dimse", "net", "app", "cli"},
    # Pure functions over stored bytes: errors and codec only, nothing that does I/O.
    "render": UPPER
    | {"index", "query", "storage", "certs", "security", "config", "logs", "patches"}
    | {"polling", "reconcile"},
}


def _imports(path: Path) -> set[str]:
    """The project rooms a module imports (``mimic_server.X...`` -> ``X``)."""
    rooms: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text())):
        names = []
        if isinstance(node, ast.Import):
            names = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names = [node.module]
        for name in names:
            parts = name.split(".")
            if parts[0] == "mimic_server" and len(parts) > 1:
                rooms.add(parts[1])
    return rooms


@pytest.mark.parametrize("room", sorted(FORBIDDEN))
def test_room_does_not_reach_up(room: str) -> None:
    target = PACKAGE / room
    files = [target] if target.suffix == ".py" else sorted(target.rglob("*.py"))
    own = room.removesuffix(".py")
    for path in files:
        if "migrations" in path.parts:
            continue
        reached = _imports(path) - {own}
        forbidden = FORBIDDEN[room]
        bad = reached - (LEAVES - {own}) if "*" in forbidden else reached & forbidden
        assert not bad, f"{path.relative_to(PACKAGE)} imports {sorted(bad)}"
