import csv
import io
from datetime import UTC, datetime, timedelta
from decimal import Decimal

import pytest

from services.console.console import (
    BreakdownRow,
    Console,
    Traffic,
    Viewer,
    breakdown_csv,
    period_spend,
)
from services.console.periods import preset
from services.console.routes import safe_next, usd
from shared.policy import Thresholds

NOW = datetime(2026, 11, 28, 14, 37, tzinfo=UTC)
ADMIN, ALICE = Viewer(1, "ops", admin=True), Viewer(2, "alice", admin=False)


class FakeStore:
    def __init__(self) -> None:
        self.asked: list[tuple] = []

    async def spend(self, user, now):
        self.asked.append(("spend", user))
        return {"hour": (Decimal("12"), Decimal("0.5")), "day": (Decimal("12.5"), Decimal(1)),
                "month": (Decimal("280"), Decimal(40))}

    async def hourly_cost(self, user, start, end):
        return {end - timedelta(hours=1): Decimal("2")}

    async def traffic(self, user, start, end):
        return Traffic({end - timedelta(minutes=1): 5}, 10, 9, 120.0)

    async def alerts(self, user, since, limit):
        self.asked.append(("alerts", user, since))
        return []

    async def breakdown(self, user, window, dimension, order, limit):
        self.asked.append(("breakdown", user, dimension))
        return []


class FakeBus:
    async def dead_letters(self):
        return 3


def console(store: FakeStore) -> Console:
    return Console(store, None, None, FakeBus(), Thresholds())  # type: ignore[arg-type]


async def test_the_overview_holds_spend_to_its_thresholds_and_fills_every_hour_and_minute():
    store = FakeStore()
    page = await console(store).overview(ADMIN, NOW)
    assert [(s.period, s.level) for s in page.spend] == [("hour", "warning"), ("day", "ok"), ("month", "ok")]
    assert len(page.hourly_cost) == 48 and page.hourly_cost[-1] == (datetime(2026, 11, 28, 14, tzinfo=UTC),
                                                                    Decimal("2"))
    assert sum(cost for _, cost in page.hourly_cost) == Decimal("2")
    assert len(page.minutes) == 24 * 60 and page.minutes[-1][1] == 5
    assert page.success_rate == Decimal("90.0")
    days_in_november = 30
    elapsed_days = Decimal(27) + (Decimal(14) + Decimal(37) / 60) / 24
    assert abs(page.projected_month - Decimal(280) * days_in_november / elapsed_days) < Decimal("0.000001")
    assert ("spend", None) in store.asked and ("alerts", None, datetime(2026, 11, 28, tzinfo=UTC)) in store.asked


async def test_a_user_sees_only_their_own_figures_held_to_the_per_user_daily_levels():
    store = FakeStore()
    page = await console(store).overview(ALICE, NOW)
    assert ("spend", "alice") in store.asked
    assert [(s.period, s.warning, s.level) for s in page.spend] == [
        ("hour", None, "ok"), ("day", Decimal(10), "warning"), ("month", None, "ok")]
    rows, dead = await console(store).alerts(ALICE, NOW)
    assert dead is None  # the bus's dead letters are everyone's: admins only
    assert (await console(store).alerts(ADMIN, NOW))[1] == 3
    await console(store).costs(ALICE, preset("24h", NOW), "model", "cost", 10)
    assert ("breakdown", "alice", "model") in store.asked


def test_period_spend_levels():
    spend = period_spend({"month": (Decimal("5000.01"), Decimal(3))}, Thresholds(), per_user=False)
    assert [s.level for s in spend] == ["ok", "ok", "critical"]
    assert [s.saved for s in spend] == [0, 0, 3]  # what the cache saved does not count towards the levels


def test_a_breakdown_row_says_how_much_of_it_the_cache_answered():
    row = BreakdownRow("m", 8, 1, 1, Decimal(1), Decimal(0), cache_hits=3, saved=Decimal("0.5"))
    assert row.hit_rate == Decimal("37.5") and BreakdownRow("m", 0, 0, 0, Decimal(0), Decimal(0)).hit_rate is None


async def test_an_unknown_breakdown_is_refused():
    with pytest.raises(ValueError, match="dimension must be one of"):
        await console(FakeStore()).costs(ADMIN, preset("24h", NOW), "team", "cost", 10)


def test_the_csv_is_what_the_page_shows_with_its_window():
    window = preset("24h", NOW)
    rows = [BreakdownRow("m1", 3, 10, 20, Decimal("0.0000123456"), Decimal(0)), BreakdownRow("m,2", 1, 1, 1,
                                                                                            Decimal("2"), Decimal("2"))]
    parsed = list(csv.DictReader(io.StringIO(breakdown_csv(rows, "model", window))))
    assert [(r["model"], Decimal(r["cost_usd"]), int(r["requests"])) for r in parsed] == [
        ("m1", Decimal("0.0000123456"), 3), ("m,2", Decimal(2), 1)]
    assert parsed[0]["from_utc"] == window.start.isoformat()


@pytest.mark.parametrize(("amount", "shown"), [
    (Decimal("1234.567"), "$1,234.57"), (Decimal("0.25"), "$0.2500"), (Decimal("0.0000042"), "$0.000004"),
    (Decimal(0), "$0.00"), (None, "—"),
])
def test_money_is_shown_with_the_places_its_size_needs(amount, shown):
    assert usd(amount) == shown


def test_a_key_a_spreadsheet_would_run_as_a_formula_is_written_as_text():
    rows = [BreakdownRow("=HYPERLINK(\"http://evil\")", 1, 1, 1, Decimal(1), Decimal(0)),
            BreakdownRow("-2+3", 1, 1, 1, Decimal(1), Decimal(0)), BreakdownRow("team=a", 1, 1, 1, Decimal(1), Decimal(0))]
    keys = [r["tag"] for r in csv.DictReader(io.StringIO(breakdown_csv(rows, "tag", preset("24h", NOW))))]
    assert keys == ["'=HYPERLINK(\"http://evil\")", "'-2+3", "team=a"]


@pytest.mark.parametrize(("target", "sent_to"), [
    ("/costs?range=7d", "/costs?range=7d"), (None, "/"), ("https://evil.example", "/"), ("//evil.example", "/"),
    ("/\\evil.example", "/"), ("/\t/evil.example", "/"), ("costs", "/"),
])
def test_after_sign_in_only_a_path_of_the_console_is_followed(target, sent_to):
    assert safe_next(target) == sent_to


def test_the_limits_form_reads_budgets_soft_thresholds_and_models_as_the_admin_api_takes_them():
    from services.console.console import budget_line, limits_from_form, parse_budget_lines
    from shared.limits import ScopeLimits

    body = limits_from_form("$500 per month Europe/Berlin\n\n0.002 day\n5 rolling 24h", "50%, 0.8", "100", "60",
                            "", "gpt-4o-mini,\nmeta-llama/Llama-3-8b-chat-hf")
    assert body == {"budgets": [{"usd": "500", "period": "month", "timezone": "Europe/Berlin"},
                                {"usd": "0.002", "period": "day"}, {"usd": "5", "rolling": "24h"}],
                    "soft": ["0.5", "0.8"], "requests": "100", "window_s": "60",
                    "models": ["gpt-4o-mini", "meta-llama/Llama-3-8b-chat-hf"]}
    limits = ScopeLimits.model_validate(body)
    assert [budget_line(b) for b in limits.budgets] == ["500 month Europe/Berlin", "0.002 day", "5 rolling 24h"]
    with pytest.raises(ValueError, match="budget line 2"):
        parse_budget_lines("1 day\n500 a month")


async def test_a_user_sees_the_limits_of_their_own_user_keys_and_team_with_each_budgets_spend():
    from services.console.console import LimitsRow
    from shared.api_keys import KeyRecord
    from shared.limits import Budget, ScopeLimits

    class LimitsStore(FakeStore):
        async def keys(self, user):
            return [KeyRecord(7, "cw_x", user, "pro", False, None, NOW, None, None, None)]

        async def team_of(self, user):
            return "research"

        async def scope_limits(self, scopes):
            self.asked.append(("scope_limits", scopes))
            month = Budget(usd=Decimal("10"), period="month", timezone="Europe/Berlin")
            return [LimitsRow("team", "research", ScopeLimits(budgets=(month,)), NOW, "admin-api:ops")]

        async def budget_spend(self, asks):
            self.asked.append(("budget_spend", asks))
            return [(Decimal("2.5"), None)]

    store = LimitsStore()
    [row] = await console(store).budgets(ALICE, NOW)
    assert ("scope_limits", [("user", "alice"), ("key", "7"), ("team", "research")]) in store.asked
    [(_, _, span)] = store.asked[-1][1]
    assert span.start == datetime(2026, 10, 31, 23, tzinfo=UTC)  # November in Berlin
    [budget] = row.budgets
    assert (budget.spent, budget.remaining, budget.percent) == (Decimal("2.5"), Decimal("7.5"), Decimal("25.0"))
    assert budget.resets_at == datetime(2026, 11, 30, 23, tzinfo=UTC)
