"""The cost page over real HTTP on loopback: its figures are the jobs' own (priced local compute,
counted here from each record's timestamps), the persistent machine and the saving, the groups,
a caller who is no admin counting only its own jobs, and every malformed query a 400 naming it."""

from __future__ import annotations

import html
import re
from collections.abc import Iterator
from datetime import timedelta

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from ephemerid.compute.prices import PriceTable
from ephemerid.errors import BadInput
from ephemerid.record import utcnow
from ephemerid.ui.app import dashboard
from ephemerid.ui.auth import CallerGate, TokenGate
from ephemerid.ui.costpage import CostQuery
from ui.conftest import ADMIN, ALICE, BOB, TOKEN
from ui.priced import PricedHome, priced_home
from ui.web import Web, serving

T4 = "Standard_NC4as_T4_v3"


@pytest.fixture(scope="module")
def priced(tmp_path_factory: pytest.TempPathFactory) -> Iterator[PricedHome]:
    with priced_home(tmp_path_factory.mktemp("cost-page")) as found:
        yield found


@pytest.fixture(scope="module")
def admin(priced: PricedHome) -> Iterator[Web]:
    with serving(dashboard(priced.service, TokenGate(TOKEN, ADMIN))) as url:
        client = Web(url)
        assert client.get(f"/cost?token={TOKEN}").status == 200
        yield client


@pytest.fixture(scope="module")
def alice(priced: PricedHome) -> Iterator[Web]:
    with serving(dashboard(priced.service, CallerGate(ALICE, keep=()))) as url:
        yield Web(url)


def figure(page: str, element: str, attribute: str = "data-usd") -> float:
    found = re.search(rf'id="{element}" {attribute}="([^"]+)"', page)
    assert found, f"the page has no #{element} with {attribute}"
    return float(found.group(1))


def groups(page: str) -> dict[str, float]:
    return {
        html.unescape(k): float(v)
        for k, v in re.findall(r'<tr data-group="([^"]+)" data-usd="([^"]+)">', page)
    }


def test_the_page_shows_what_every_job_cost_at_the_local_price(
    admin: Web, priced: PricedHome
) -> None:
    page = admin.get("/cost")
    everyone = [*priced.alice_jobs, priced.bob_job]

    assert page.status == 200
    assert figure(page.text, "total-cost") == pytest.approx(PricedHome.cost_of(everyone))
    assert re.search(r'id="total-jobs">3<', page.text)
    assert figure(page.text, "gpu-hours", "data-h") == 0  # local CPU jobs hold no GPU
    held_s = sum((j.released_at - j.compute_requested_at).total_seconds() for j in everyone)  # type: ignore[operator]
    assert figure(page.text, "held", "data-h") == pytest.approx(held_s / 3600)
    assert re.search(r'id="setup-share">\d+%<', page.text)
    assert re.search(r'id="idle-share">\d+%<', page.text)
    assert 'id="no-persistent"' in page.text and 'id="daily-data"' in page.text
    assert "period: " in page.text and "jobs: at the price each job" in page.text  # assumptions
    assert '<a href="/cost" class="active">Cost</a>' in page.text  # in the nav


def test_the_groups_by_owner_split_the_spend_between_the_owners(
    admin: Web, priced: PricedHome
) -> None:
    page = admin.get("/cost?by=owner").text

    assert groups(page) == {
        ALICE.name: pytest.approx(PricedHome.cost_of(priced.alice_jobs)),
        BOB.name: pytest.approx(PricedHome.cost_of([priced.bob_job])),
    }
    assert set(groups(admin.get("/cost?by=backend").text)) == {"local"}
    by_day = groups(admin.get("/cost?by=day&since=2d").text)
    assert len(by_day) == 3 and f"{priced.bob_job.released_at:%Y-%m-%d}" in by_day
    assert sum(by_day.values()) == pytest.approx(figure(page, "total-cost"))


def test_the_persistent_machine_costs_its_price_for_every_hour_and_the_saving_is_the_rest(
    admin: Web, priced: PricedHome
) -> None:
    today = utcnow().replace(hour=0, minute=0, second=0, microsecond=0)
    since, until = today - timedelta(days=1), today + timedelta(days=1)
    query = f"since={since:%Y-%m-%d}&until={until:%Y-%m-%d}&vs={T4.lower()}"
    page = admin.get(f"/cost?{query}").text
    price = PriceTable.load().per_hour(T4, False)
    assert price is not None

    cost = figure(page, "total-cost")
    assert figure(page, "persistent-cost") == pytest.approx(48 * price)
    assert figure(page, "saving") == pytest.approx(48 * price - cost)
    assert f"one <b>{T4}</b> (on demand" in page  # named as the price table spells it
    assert "persistent: one Standard_NC4as_T4_v3 kept on all 48.00 h" in page
    assert page.count('"persistent_usd"') == 2  # the chart's line, one point a day
    spot = admin.get(f"/cost?{query}&spot=1").text
    spot_price = PriceTable.load().per_hour(T4, True)
    assert spot_price is not None and spot_price < price
    assert figure(spot, "persistent-cost") == pytest.approx(48 * spot_price)


def test_a_caller_who_is_no_admin_counts_only_its_own_jobs(alice: Web, priced: PricedHome) -> None:
    page = alice.get("/cost?by=owner").text

    assert figure(page, "total-cost") == pytest.approx(PricedHome.cost_of(priced.alice_jobs))
    assert re.search(r'id="total-jobs">2<', page)
    assert set(groups(page)) == {ALICE.name}
    assert BOB.name not in page
    assert "Only your own jobs are counted" in page


@pytest.mark.parametrize(
    ("query", "named"),
    [
        ("since=yesterday", "since"),
        ("until=soon", "until"),
        ("since=1d&until=3d", "since"),  # backwards
        ("by=gpu", "by"),
        ("spot=perhaps", "spot"),
        ("colour=red", "colour"),
        ("vs=%3Cb%3E", "vs"),
        ("since=" + "9" * 60, "since"),
    ],
)
def test_a_malformed_cost_query_is_a_400_page_naming_the_field(
    admin: Web, query: str, named: str
) -> None:
    got = admin.get(f"/cost?{query}")

    assert got.status == 400
    message = html.unescape(re.search(r'id="error">(.*?)</p>', got.text, re.S).group(1))  # type: ignore[union-attr]
    assert named in message and "--" not in message  # the page's fields, not the CLI's flags


def test_an_unknown_sku_is_a_400_naming_it_and_the_close_names(admin: Web) -> None:
    got = admin.get("/cost?vs=Standard_NC4as")

    assert got.status == 400
    assert "vs: SKU &#39;Standard_NC4as&#39; is not in the price table" in got.text
    assert "did you mean" in got.text and T4 in got.text


def test_the_cost_page_without_the_token_is_a_401(admin: Web) -> None:
    stranger = Web(admin.base)

    assert stranger.get("/cost").status == 401
    assert stranger.get("/cost?by=owner&vs=Standard_NC4as_T4_v3").status == 401


KEYS = st.sampled_from(["since", "until", "by", "vs", "spot", "colour", "token", "code"])


@settings(deadline=None)  # no timing on a loaded machine
@given(st.dictionaries(KEYS, st.text(max_size=120), max_size=6))
def test_any_cost_query_parses_or_is_bad_input_naming_the_query_there_is(
    query: dict[str, str],
) -> None:
    try:
        wanted = CostQuery.parse(query)
    except BadInput as exc:
        assert "use since=7d" in str(exc)
        return
    assert CostQuery.parse(wanted.query()) == wanted  # what the page links to parses again


def test_behind_the_function_app_every_link_and_the_form_carry_the_key(
    priced: PricedHome,
) -> None:
    app = dashboard(priced.service, CallerGate(ALICE), base="/api/ui")
    with serving(app) as url:
        page = Web(url).get("/api/ui/cost?code=the-key&by=rule").text

    assert '<input type="hidden" name="code" value="the-key">' in page
    assert 'href="/api/ui/cost?code=the-key"' in page  # the nav
    assert re.search(r'<tr data-group="-" data-usd="[0-9.e-]+">', page)  # submitted by hand
