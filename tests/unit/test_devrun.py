"""`costwarden run`: how many processes of each service (--replicas), and how it keeps them running."""

import asyncio
import logging
import sys

import pytest

from services import devrun
from services.devrun import (
    CRASH_LOOP_EXITS,
    CRASH_LOOP_WINDOW_S,
    FIRST_BACKOFF_S,
    MAX_BACKOFF_S,
    STEADY_AFTER_S,
    Run,
    Supervisor,
    exit_status,
    parse_replicas,
    restart_delay,
)
from tests.support.polling import eventually


def test_named_services_take_their_count_and_the_rest_one():
    assert parse_replicas("limiter=3, cost=2") == {"limiter": 3, "cost": 2, "notifier": 1, "health": 1, "backup": 1,
                                                  "console": 1}
    assert parse_replicas(None) == dict.fromkeys(("limiter", "cost", "notifier", "health", "backup", "console"), 1)


@pytest.mark.parametrize(("text", "says"), [
    ("api=2", "API_WORKERS"), ("gateway=2", "unknown service"), ("limiter=0", "from 1 to 16"),
    ("limiter=17", "from 1 to 16"), ("limiter", "from 1 to 16"), ("cost=two", "from 1 to 16"),
])
def test_a_wrong_count_or_service_is_refused_with_the_reason(text, says):
    with pytest.raises(ValueError, match=says):
        parse_replicas(text)


def runs_lasting(*seconds: float, gap: float = 1.0) -> list[Run]:
    """Runs one after the other, each `gap` seconds after the previous one ended."""
    runs, now = [], 1000.0
    for lasted in seconds:
        runs.append(Run(now, now + lasted))
        now += lasted + gap
    return runs


def test_a_process_that_exits_once_starts_again_after_the_first_backoff():
    assert restart_delay(runs_lasting(3600)) == FIRST_BACKOFF_S == 0.5
    assert restart_delay(runs_lasting(2)) == 0.5


def test_the_backoff_doubles_with_each_short_run_in_a_row_up_to_its_cap():
    assert [restart_delay(runs_lasting(*[1] * n, gap=20)) for n in range(1, 7)] == [0.5, 1, 2, 4, 8, 8]
    assert MAX_BACKOFF_S == 8


def test_a_process_that_stayed_up_a_while_starts_again_after_the_first_backoff():
    assert restart_delay(runs_lasting(1, 1, 1, STEADY_AFTER_S, gap=20)) == 0.5
    assert restart_delay(runs_lasting(1, 1, 1, STEADY_AFTER_S, 1, 1, gap=20)) == 1


def test_five_exits_within_a_minute_is_a_crash_loop_and_given_up():
    assert (CRASH_LOOP_EXITS, CRASH_LOOP_WINDOW_S) == (5, 60)
    assert restart_delay(runs_lasting(1, 1, 1, 1)) == 4
    assert restart_delay(runs_lasting(1, 1, 1, 1, 1)) is None
    assert restart_delay(runs_lasting(1, 1, 1, 1, 1, 1)) is None


def test_exits_spread_wider_than_the_window_are_not_a_crash_loop():
    assert restart_delay(runs_lasting(1, 1, 1, 1, 1, gap=15)) == 8  # the first end is 64 s before the last
    assert restart_delay(runs_lasting(40, 40, 40, 40, 40)) == 0.5


@pytest.mark.parametrize(("returncode", "says"), [
    (0, "status 0"), (1, "status 1"), (-9, "killed by SIGKILL"), (-15, "killed by SIGTERM"), (-99, "killed by signal 99"),
])
def test_an_exit_says_its_status_or_the_signal_that_killed_it(returncode, says):
    assert exit_status(returncode) == says


WORKER = """
import os, sys, time
with open(sys.argv[1], "a") as out:
    out.write(f"{os.getpid()} {os.environ['SAID']}\\n")
if sys.argv[2] == "sleep":
    time.sleep(60)
sys.exit(int(sys.argv[2]))
"""


def worker(out, then: str) -> list[str]:
    """A process that writes its pid and what its environment says to `out`, then exits with the status
    `then` (or sleeps)."""
    return [sys.executable, "-c", WORKER, str(out), then]


def run_lines(caplog) -> list[str]:
    return [record.getMessage() for record in caplog.records if record.name == "costwarden.run"]


async def test_a_process_that_keeps_exiting_is_restarted_the_same_way_with_growing_waits_then_given_up(
        tmp_path, caplog, monkeypatch):
    monkeypatch.setattr(devrun, "FIRST_BACKOFF_S", 0.1)
    caplog.set_level(logging.INFO, logger="costwarden.run")
    out = tmp_path / "runs"
    supervisor = Supervisor()
    await supervisor.start("worker", worker(out, "3"), {"SAID": "same"})
    assert await asyncio.wait_for(supervisor.gave_up, 20) == (
        "worker is in a crash loop (5 exits within 60s; its lines above say why)")
    runs = [line.split() for line in out.read_text().splitlines()]
    assert len({pid for pid, _ in runs}) == 5 and {said for _, said in runs} == {"same"}
    exits = [line.split(" after ")[0] + line.split("s up")[1] for line in run_lines(caplog) if " exited " in line]
    assert exits == [*(f"worker exited (status 3); restarting it in {wait}s" for wait in ("0.1", "0.2", "0.4", "0.8")),
                     "worker exited (status 3): 5 exits within 60s, a crash loop; not restarting it"]
    await supervisor.stop_all()


async def test_stopping_during_a_backoff_restarts_nothing(tmp_path, caplog, monkeypatch):
    monkeypatch.setattr(devrun, "FIRST_BACKOFF_S", 60)
    monkeypatch.setattr(devrun, "MAX_BACKOFF_S", 60)
    caplog.set_level(logging.INFO, logger="costwarden.run")
    out = tmp_path / "runs"
    supervisor = Supervisor()
    await supervisor.start("worker", worker(out, "0"), {"SAID": "once"})
    assert await eventually(lambda: any("restarting it in 60.0s" in line for line in run_lines(caplog)), 10)
    await asyncio.wait_for(supervisor.stop_all(), 5)
    assert len(out.read_text().splitlines()) == 1
    assert sum("started worker" in line for line in run_lines(caplog)) == 1


async def test_stopping_a_running_process_stops_it_and_restarts_nothing(tmp_path, caplog):
    caplog.set_level(logging.INFO, logger="costwarden.run")
    out = tmp_path / "runs"
    supervisor = Supervisor()
    await supervisor.start("worker", worker(out, "sleep"), {"SAID": "up"})
    assert await eventually(out.exists, 10)
    await asyncio.wait_for(supervisor.stop_all(), 10)
    assert supervisor.processes["worker"].returncode == -15  # SIGTERM
    assert not [line for line in run_lines(caplog) if " exited " in line]
    assert len(out.read_text().splitlines()) == 1
