"""The short soak (`python -m soak --seconds 60 --short`): the whole system with replicas under mixed
traffic and a few faults, reconciled to the cent. `make soak` runs the long one."""

from __future__ import annotations

import subprocess
import sys

import pytest

from tests.servers import ROOT

pytestmark = pytest.mark.system


@pytest.mark.timeout(600)
def test_a_short_soak_balances_the_books():
    run = subprocess.run([sys.executable, "-m", "soak", "--seconds", "60", "--short", "--seed", "11"], cwd=ROOT,
                         capture_output=True, text=True, timeout=560)
    assert run.returncode == 0, run.stdout[-6000:] + run.stderr[-3000:]
    assert "PASSED: the books balance" in run.stdout
