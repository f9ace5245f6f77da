"""A readiness check cut short by its deadline does not keep ``/readyz`` at 503 for ever."""

from __future__ import annotations

import threading

import anyio

from mimic_server.web.ops import OpsState, _run_check


def _state(check_timeout: float) -> OpsState:
    return OpsState(
        alive=lambda: True, draining=lambda: False, checks={"database": lambda: "ok"},
        metrics=None,  # type: ignore[arg-type]  # not read by the checks
        check_timeout=check_timeout,
    )


def test_a_check_cancelled_before_it_started_is_run_by_the_next_probe() -> None:
    state = _state(check_timeout=0)  # the deadline has passed before the worker starts
    assert anyio.run(_run_check, state, "database", lambda: "ok") == (False, "timeout after 0 s")
    state.check_timeout = 30
    assert anyio.run(_run_check, state, "database", lambda: "ok") == (True, "ok")


def test_a_check_still_running_is_not_started_again() -> None:
    state = _state(check_timeout=30)
    started, release = threading.Event(), threading.Event()

    def hung() -> str:
        started.set()
        release.wait()
        return "ok"

    async def probe_while_hung() -> tuple[bool, str]:
        async with anyio.create_task_group() as group:
            group.start_soon(_run_check, state, "database", hung)
            await anyio.to_thread.run_sync(started.wait)
            second = await _run_check(state, "database", lambda: "never run")
            release.set()
        return second

    assert anyio.run(probe_while_hung) == (False, "timeout (an earlier check has not returned)")
    assert anyio.run(_run_check, state, "database", lambda: "ok") == (True, "ok")
