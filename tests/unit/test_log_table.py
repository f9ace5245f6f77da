"""Every message ``mimic_server`` logs at INFO or above is in the operator guide's log table.

The table (docs/operator-guide.md, section 11, "Log") is what an operator greps for when a
line appears; a message it does not list leaves them guessing whether to act. Walking the
source with ``ast`` finds each literal message handed to a logger, so a new ``log.warning``
without its row fails here instead of surfacing at 3 a.m.
"""

from __future__ import annotations

import ast
import re
from collections import defaultdict
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
PACKAGE = ROOT / "mimic_server"
GUIDE = ROOT / "docs" / "operator-guide.md"

LOGGERS = {"log", "logger"}
LEVELS = {"info", "warning", "error", "critical", "exception"}  # not debug: it may say more
LEVEL_CONSTANTS = {"INFO", "WARNING", "ERROR", "CRITICAL"}
PLACEHOLDER = re.compile(r"%(?:\.\d+)?[sdfr]")


def _literals(node: ast.expr) -> list[str]:
    """The message texts an argument can take: a literal, or each literal branch of
    ``a if c else b`` (how the code picks between two wordings of one event)."""
    if isinstance(node, ast.Constant) and isinstance(node.value, str):
        return [node.value]
    if isinstance(node, ast.IfExp):
        return _literals(node.body) + _literals(node.orelse)
    return []


def _level_at_least_info(node: ast.expr) -> bool:
    """For ``log.log(level, ...)``: whether ``level`` can be INFO or above."""
    if isinstance(node, ast.Attribute):
        return node.attr in LEVEL_CONSTANTS
    if isinstance(node, ast.IfExp):
        return _level_at_least_info(node.body) or _level_at_least_info(node.orelse)
    return True  # unknown: assume it is shown


def logged_messages() -> dict[str, set[str]]:
    """Each literal message logged at INFO or above -> where (``path:line``)."""
    found: dict[str, set[str]] = defaultdict(set)
    for path in sorted(PACKAGE.rglob("*.py")):
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"), str(path))):
            if not (isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute)
                    and isinstance(node.func.value, ast.Name)
                    and node.func.value.id in LOGGERS):
                continue
            if node.func.attr in LEVELS and node.args:
                message = node.args[0]
            elif (node.func.attr == "log" and len(node.args) >= 2
                  and _level_at_least_info(node.args[0])):
                message = node.args[1]
            else:
                continue
            for text in _literals(message):
                found[text].add(f"{path.relative_to(ROOT)}:{node.lineno}")
    return found


def table_messages() -> set[str]:
    """The backticked texts of the message column of the log table."""
    text = GUIDE.read_text(encoding="utf-8")
    section = text.split("\n### Log\n", 1)[1].split("\n### ", 1)[0]
    messages: set[str] = set()
    for line in section.splitlines():
        if not line.startswith("| `"):
            continue
        first_cell = line[2:].split(" | ", 1)[0]
        messages.update(re.findall(r"`([^`]+)`", first_cell))
    return messages


def test_the_collector_sees_the_known_messages() -> None:
    # Guards the walk itself: an empty result would make the next test pass vacuously.
    found = logged_messages()
    for known in ("listening", "C-STORE refused", "ready", "not ready", "worker started"):
        assert known in found


def test_every_logged_message_is_in_the_log_table() -> None:
    documented = table_messages()
    missing = {
        message: sorted(where) for message, where in logged_messages().items()
        if PLACEHOLDER.sub("…", message) not in documented
    }
    assert not missing, (
        f"{len(missing)} messages logged at INFO or above are not in docs/operator-guide.md's "
        "log table:\n" + "\n".join(f"  {m!r}  ({', '.join(w)})" for m, w in sorted(missing.items()))
    )
