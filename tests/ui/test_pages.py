"""Every dashboard page and error over real HTTP on loopback: the token, the filters, escaping,
cancel and promote as POSTs with a CSRF value, and a caller that sees only its own jobs."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest

from drive import Gate, held_spec, wait_for
from ephemerid.record import JobState
from ephemerid.ui.app import dashboard
from ephemerid.ui.auth import CallerGate
from ui.conftest import ALICE, BOB, TOKEN, Home
from ui.web import Web, serving

PAGES = ["/jobs", "/sweeps", "/models", "/compute", "/rejected"]


def job_ids(html: str) -> set[str]:
    return set(re.findall(r'data-job="([^"]+)"', html))


def test_a_request_without_the_token_gets_401(admin_url: str, home: Home) -> None:
    stranger = Web(admin_url)
    paths = [*PAGES, f"/jobs/{home.alice_job.id}", f"/jobs/{home.alice_job.id}/live.json"]
    for path in [*paths, "/static/app.js", "/jobs?token=wrong", "/no/such/page"]:
        assert stranger.get(path).status == 401, path
    refused = stranger.post(f"/jobs/{home.alice_job.id}/cancel", {"csrf": "x"})
    assert refused.status == 401
    assert "?token=" in stranger.get("/jobs").text  # it says where the token comes from
    assert Web(admin_url, {"eph_ui": TOKEN}).get("/no/such/page").status == 404


def test_the_token_becomes_an_httponly_strict_cookie_and_leaves_the_address(
    admin_url: str,
) -> None:
    client = Web(admin_url)
    entered = client.get(f"/jobs?state=SUCCEEDED&token={TOKEN}", follow=False)

    assert entered.status == 303
    assert entered.header("location") == "/jobs?state=SUCCEEDED"
    (cookie,) = [c for c in entered.cookies() if c.startswith("eph_ui=")]
    assert "HttpOnly" in cookie and "samesite=strict" in cookie.lower()
    assert client.get("/models").status == 200  # the cookie alone lets it in from then on


def test_every_page_shows_what_the_home_holds(web: Web, home: Home) -> None:
    jobs = web.get("/jobs")
    assert {home.alice_job.id, home.bob_job.id, home.sweep.id} <= job_ids(jobs.text)
    job = web.get(f"/jobs/{home.alice_job.id}").text
    assert "SUCCEEDED" in job and "step 2: loss 0.333" in job  # its log
    assert '"loss": [[0, 1.0], [1, 0.5]' in job  # its curve's points
    assert f"/jobs/{home.alice_job.id}/outputs/report.txt" in job
    assert "compute released" in job and "code started" in job
    sweep = web.get(f"/sweeps/{home.sweep.id}").text
    trials = [t.id for t in home.service.sweep_trials(home.sweep.id)]
    assert all(t in sweep for t in trials) and "best val_loss so far" in sweep
    assert home.sweep.id in web.get("/sweeps").text
    models = web.get("/models").text
    assert "tiny" in models and home.alice_job.id in models
    assert "Nothing is held" in web.get("/compute").text
    rejected = web.get("/rejected").text
    assert "refused for key:alice" in rejected and "refused for key:bob" in rejected


def test_an_output_downloads_as_the_job_wrote_it(web: Web, home: Home) -> None:
    got = web.get(f"/jobs/{home.alice_job.id}/outputs/report.txt")

    assert got.status == 200
    assert got.body == b"tiny report\n"
    assert "attachment" in (got.header("content-disposition") or "")
    assert web.get(f"/jobs/{home.alice_job.id}/outputs/nope.txt").status == 404


def test_what_a_record_holds_reaches_the_page_as_text(web: Web, home: Home) -> None:
    page = web.get(f"/jobs/{home.alice_job.id}").text

    assert "<script>alert(" not in page
    assert "&lt;script&gt;alert(&#39;x&#39;)&lt;/script&gt;" in page


@pytest.mark.parametrize(
    ("query", "named"),
    [
        ("state=NOPE", "state"),
        ("limit=abc", "limit"),
        ("limit=0", "limit"),
        ("colour=red", "colour"),
        ("owner=%3Cb%3E", "owner"),
    ],
)
def test_a_malformed_filter_is_a_400_page_naming_it(web: Web, query: str, named: str) -> None:
    for path in ("/jobs", "/jobs/rows"):
        got = web.get(f"{path}?{query}")
        assert got.status == 400
        assert named in got.text


def test_the_jobs_filters_take_state_rule_sweep_and_owner(web: Web, home: Home) -> None:
    trials = {t.id for t in home.service.sweep_trials(home.sweep.id)}

    assert job_ids(web.get("/jobs?state=failed").text) == {home.bob_job.id}
    assert job_ids(web.get("/jobs?owner=key:bob").text) == {home.bob_job.id}
    assert job_ids(web.get(f"/jobs?sweep={home.sweep.id}").text) == trials | {home.sweep.id}
    assert "No jobs match" in web.get("/jobs?rule=nightly").text


def test_the_trials_sort_by_their_metric_and_an_unknown_sort_is_a_400(web: Web, home: Home) -> None:
    rows = home.service.get(home.sweep.id).sweep["trials"]  # type: ignore[index]
    best_first = [t["job"] for t in sorted(rows, key=lambda t: t["value"])]

    page = web.get(f"/sweeps/{home.sweep.id}?sort=value").text
    assert [m for m in re.findall(r"/jobs/([a-z]+-[0-9a-f]{12})", page) if m in best_first][
        1:
    ] == best_first  # the first link is the best trial's, in the summary
    worst_first = web.get(f"/sweeps/{home.sweep.id}?sort=value&desc=1").text
    assert worst_first.index(best_first[-1]) < worst_first.rindex(best_first[0])
    bad = web.get(f"/sweeps/{home.sweep.id}?sort=colour")
    assert bad.status == 400 and "colour" in bad.text
    assert web.get(f"/sweeps/{home.alice_job.id}").status == 404  # a job, not a sweep


def test_cancel_and_promote_are_posts_with_the_csrf_value(web: Web, home: Home) -> None:
    versions_before = home.service.models.aliases("tiny")
    assert web.get(f"/jobs/{home.alice_job.id}/cancel").status == 405
    assert web.get("/models/promote").status == 405
    form = {"name": "tiny", "version": "1", "alias": "staging"}
    assert web.post("/models/promote", form).status == 403
    assert web.post("/models/promote", {**form, "csrf": "forged-value-123456"}).status == 403
    assert home.service.models.aliases("tiny") == versions_before

    csrf = web.get("/models").csrf
    assert web.post("/models/promote", {**form, "csrf": csrf}).status == 200
    assert home.service.models.aliases("tiny")["staging"] == 1


def test_a_promote_of_a_version_that_does_not_exist_says_so_on_the_page(
    web: Web, home: Home
) -> None:
    csrf = web.get("/models").csrf
    got = web.post("/models/promote", {"name": "tiny", "version": "99", "alias": "x", "csrf": csrf})

    assert got.status == 404
    assert "model &#39;tiny&#39; has no version 99 (versions: 1, 2)" in got.text
    assert "x" not in home.service.models.aliases("tiny")
    missing = web.post(
        "/models/promote", {"name": "nope", "version": "1", "alias": "x", "csrf": csrf}
    )
    assert missing.status == 404 and "has no versions" in missing.text
    bad = web.post(
        "/models/promote", {"name": "tiny", "version": "one", "alias": "x", "csrf": csrf}
    )
    assert bad.status == 400 and "one" in bad.text


def test_a_cancel_from_the_page_stops_the_job(web: Web, home: Home, tmp_path: Path) -> None:
    gate = Gate(tmp_path / "gate")
    job = home.service.submit(held_spec(home.code, gate), owner=ALICE.name).job
    gate.pid()
    page = web.get(f"/jobs/{job.id}")
    assert 'id="cancel"' in page.text
    assert job.id in web.get("/compute").text  # held now

    done = web.post(f"/jobs/{job.id}/cancel", {"csrf": page.csrf})

    assert done.status == 200 and "CANCELLED" in done.text
    cancelled = wait_for(
        lambda: (j := home.service.get(job.id)).settled and j, f"{job.id} to settle", 60
    )
    assert cancelled.state is JobState.CANCELLED
    assert "cancelled from the dashboard by cli:tester" in cancelled.reason


def test_the_live_json_streams_the_log_after_an_offset(web: Web, home: Home) -> None:
    whole = web.get(f"/jobs/{home.alice_job.id}/live.json?offset=0")
    assert whole.status == 200
    data = json.loads(whole.body)
    assert data["settled"] is True and "step 2: loss 0.333" in data["log"]
    assert data["metrics"]["loss"] == [[0, 1.0], [1, 0.5], [2, pytest.approx(1 / 3)]]
    after = json.loads(
        web.get(f"/jobs/{home.alice_job.id}/live.json?offset={data['next_offset']}").body
    )
    assert after["log"] == "" and after["next_offset"] == data["next_offset"]
    assert web.get(f"/jobs/{home.alice_job.id}/live.json?offset=-1").status == 400


# -- a caller who is no admin ----------------------------------------------------------------


def test_a_caller_sees_only_its_own_jobs_and_refusals(alice_url: str, home: Home) -> None:
    alice = Web(alice_url)
    listed = job_ids(alice.get("/jobs").text)
    assert home.alice_job.id in listed and home.sweep.id in listed
    assert home.bob_job.id not in listed
    assert job_ids(alice.get("/jobs?owner=key:bob").text) == set()
    rejected = alice.get("/rejected").text
    assert "refused for key:alice" in rejected and "refused for key:bob" not in rejected
    assert "key:bob" not in alice.get("/compute").text


def test_another_owner_s_job_answers_404_everywhere(alice_url: str, home: Home) -> None:
    alice = Web(alice_url)
    bob = home.bob_job.id
    for path in (f"/jobs/{bob}", f"/jobs/{bob}/live.json", f"/jobs/{bob}/outputs/report.txt"):
        got = alice.get(path)
        assert got.status == 404, path
        assert "params" not in got.text.lower()
    csrf = alice.get("/models").csrf
    assert alice.post(f"/jobs/{bob}/cancel", {"csrf": csrf}).status == 404
    assert home.service.get(bob).state is JobState.FAILED


def test_a_caller_promotes_only_versions_its_own_jobs_made(home: Home) -> None:
    with serving(dashboard(home.service, CallerGate(BOB, keep=()))) as url:
        bob = Web(url)
        page = bob.get("/models")
        assert f'href="/jobs/{home.alice_job.id}"' not in page.text  # not linked for bob
        form = {"name": "tiny", "version": "2", "alias": "bobs", "csrf": page.csrf}
        refused = bob.post("/models/promote", form)

    assert refused.status == 404 and "made by another" in refused.text
    assert "bobs" not in home.service.models.aliases("tiny")
