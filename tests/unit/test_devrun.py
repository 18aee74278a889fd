"""`costwarden run --replicas`: how many processes of each service."""

import pytest

from services.devrun import parse_replicas


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
