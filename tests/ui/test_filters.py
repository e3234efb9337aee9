"""The jobs page's filters: any query either parses or is BadInput naming the fix, never a crash."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from ephemerid.errors import BadInput
from ephemerid.record import JobState
from ephemerid.ui.views import JobFilter

KEYS = st.sampled_from(["state", "rule", "sweep", "owner", "limit", "colour", "token", "code"])


@settings(deadline=None)  # no timing on a loaded machine
@given(st.dictionaries(KEYS, st.text(max_size=300), max_size=6))
def test_any_query_parses_or_is_bad_input(query: dict[str, str]) -> None:
    try:
        wanted = JobFilter.parse(query)
    except BadInput as exc:
        assert "use state=RUNNING" in str(exc) or "state:" in str(exc)
        return
    assert JobFilter.parse(wanted.query()) == wanted  # what the page links to parses again


def test_a_filter_takes_states_in_any_case_and_leaves_out_the_gates_own_parameters() -> None:
    wanted = JobFilter.parse({"state": "running", "token": "t", "code": "k", "owner": ""})

    assert wanted.state is JobState.RUNNING and wanted.owner is None


@pytest.mark.parametrize("limit", ["0", "5001", "-1", "1e3", "ten"])
def test_a_limit_out_of_range_names_the_range(limit: str) -> None:
    with pytest.raises(BadInput, match=r"limit=1\.\.5000"):
        JobFilter.parse({"limit": limit})
