"""The deploy tooling agrees with the services it deploys: each role may look up exactly the streams
its service binds, and `make run` starts each service on the port the service itself defaults to."""

from __future__ import annotations

import importlib

import pytest

from services.deploy.bus_permissions import PERMISSIONS, streams_looked_up
from services.deploy.settings import DeploySettings
from shared.subjects import STREAMS_BOUND

SERVICES = ("api", "limiter", "cost", "notifier", "health", "backup", "console")


@pytest.mark.parametrize("role", sorted(STREAMS_BOUND))
def test_a_role_may_look_up_exactly_the_streams_its_service_binds(role):
    assert sorted(streams_looked_up(role)) == sorted(STREAMS_BOUND[role])


def test_every_role_but_the_bus_s_own_ones_binds_its_streams():
    assert set(PERMISSIONS) - set(STREAMS_BOUND) == {"upstream", "admin"}


@pytest.mark.parametrize("service", SERVICES)
def test_the_tooling_knows_each_service_s_port_as_the_service_does(service):
    settings_class = getattr(importlib.import_module(f"services.{service}.settings"), f"{service.capitalize()}Settings")
    field = f"{service}_port"
    assert DeploySettings.model_fields[field].default == settings_class.model_fields[field].default
