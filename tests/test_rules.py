"""ephemerid.yaml: events fill rule templates into specs; bad rules and blob names are refused."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from conftest import EXAMPLES
from ephemerid.errors import BadInput, RuleError, UnsafeName
from ephemerid.rules import Rules
from ephemerid.spec import JobKind, ModelRef

AT = datetime(2024, 3, 5, 14, 30, 15, tzinfo=UTC)

TRAIN_RULE = """\
rules:
  - name: train-on-upload
    blob: incoming/train/{name}.csv
    job:
      kind: train
      name: train-{name}
      code: ./code
      entrypoint: train.py
      inputs: {data: "{uri}"}
      params: {source: "{blob}", day: "{date}", tag: "{etag}", by: "{rule}"}
"""


def rules_file(tmp_path: Path, text: str) -> Path:
    folder = tmp_path / "project"
    folder.mkdir(exist_ok=True)
    path = folder / "ephemerid.yaml"
    path.write_text(text, encoding="utf-8")
    return path


def parse(text: str) -> Rules:
    return Rules.parse(text, base=Path("/srv/project"))


def rule_error(text: str) -> str:
    with pytest.raises(RuleError) as caught:
        parse(text)
    return str(caught.value)


def one_rule(trigger: str, job: str = "{kind: train, code: ./c, entrypoint: t.py}") -> str:
    return f"rules:\n  - name: r\n    {trigger}\n    job: {job}\n"


# --- the example rules ---------------------------------------------------------------------


def test_the_example_rules_file_parses() -> None:
    rules = Rules.load(EXAMPLES / "ephemerid.yaml")

    assert {r.name for r in rules.all} == {
        "train-on-upload",
        "score-on-upload",
        "nightly-retrain",
        "sklearn-on-upload",
    }


def test_an_example_upload_makes_a_train_job_whose_code_exists() -> None:
    rules = Rules.load(EXAMPLES / "ephemerid.yaml")
    uri = "file:///bucket/incoming/train/churn.csv"

    [match] = rules.match_blob("incoming/train/churn.csv", uri=uri, etag="0x1", at=AT)

    assert match.rule.name == "train-on-upload"
    assert match.spec.kind is JobKind.TRAIN
    assert match.spec.name == "train-churn"
    assert match.spec.inputs == {"data": uri}
    assert Path(match.spec.code) == (EXAMPLES / "tabular").resolve()
    assert (Path(match.spec.code) / match.spec.entrypoint).is_file()
    assert match.spec.compute.gpus == 1  # from defaults


def test_an_example_score_upload_makes_a_predict_job_for_the_production_model() -> None:
    rules = Rules.load(EXAMPLES / "ephemerid.yaml")

    [match] = rules.match_blob("incoming/score/june.csv", uri="u", etag="e", at=AT)

    assert match.spec.kind is JobKind.PREDICT
    assert match.spec.model == ModelRef(name="tabular", alias="production")


# --- blob matching -------------------------------------------------------------------------


def test_a_blob_match_fills_name_uri_blob_etag_date_and_rule(tmp_path: Path) -> None:
    rules = Rules.load(rules_file(tmp_path, TRAIN_RULE))
    uri = "file:///bucket/incoming/train/sales.csv"

    [match] = rules.match_blob("incoming/train/sales.csv", uri=uri, etag="0xAB", at=AT)

    assert match.spec.name == "train-sales"
    assert match.spec.inputs == {"data": uri}
    assert match.spec.params == {
        "source": "incoming/train/sales.csv",
        "day": AT.strftime("%Y-%m-%d"),
        "tag": "0xAB",
        "by": "train-on-upload",
    }


def test_relative_code_resolves_against_the_rules_files_folder(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    path = rules_file(tmp_path, TRAIN_RULE)
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    monkeypatch.chdir(elsewhere)

    [match] = Rules.load(path).match_blob("incoming/train/a.csv", uri="u", etag="e", at=AT)

    assert Path(match.spec.code) == (path.parent / "code").resolve()


def test_absolute_code_and_artifact_uris_are_left_as_written(tmp_path: Path) -> None:
    absolute = (tmp_path / "abs").as_posix()
    for code in (absolute, "file:///bucket/code/v1"):
        rules = parse(TRAIN_RULE.replace("./code", code))

        [match] = rules.match_blob("incoming/train/a.csv", uri="u", etag="e", at=AT)

        assert match.spec.code == code


@pytest.mark.parametrize(
    "key",
    ["incoming/score/a.csv", "incoming/train/a.json", "incoming/train/sub/a.csv", "other/a.csv"],
)
def test_a_blob_matching_no_rule_makes_no_job(key: str) -> None:
    assert parse(TRAIN_RULE).match_blob(key, uri="u", etag="e", at=AT) == []


def test_braces_in_a_blob_name_are_inserted_as_plain_text() -> None:
    text = TRAIN_RULE.replace("      name: train-{name}\n", "")
    [match] = parse(text).match_blob("incoming/train/{rule}{0}.csv", uri="u", etag="e", at=AT)

    assert match.spec.params["source"] == "incoming/train/{rule}{0}.csv"


@pytest.mark.parametrize(
    ("key", "reason"),
    [
        ("incoming/train/../x.csv", "'..'"),
        ("incoming/train/../../etc/passwd", "'..'"),
        ("incoming/./train/x.csv", "'.'"),
        ("/etc/passwd", "absolute"),
        ("incoming\\train\\x.csv", "backslash"),
        ("incoming/train/x\x00.csv", "control characters"),
        ("incoming/train/x\n.csv", "control characters"),
        ("incoming/train/x\x7f.csv", "control characters"),
        ("incoming//train/x.csv", "empty path segment"),
        ("incoming/train/", "empty path segment"),
        ("", "empty"),
        ("incoming/train/" + "a" * 1100 + ".csv", "longer than"),
    ],
)
def test_a_blob_name_escaping_its_prefix_is_refused_with_the_reason(key: str, reason: str) -> None:
    with pytest.raises(UnsafeName, match="refused") as caught:
        parse(TRAIN_RULE).match_blob(key, uri="u", etag="e", at=AT)

    assert reason in str(caught.value)


def test_a_blob_whose_name_breaks_the_job_name_gets_a_valid_name_derived_from_it() -> None:
    rules = parse(TRAIN_RULE)

    [match] = rules.match_blob("incoming/train/bad name!.csv", uri="u", etag="e", at=AT)

    assert match.spec.name == "train-bad-name"


# --- rules file errors ---------------------------------------------------------------------


def test_rules_that_are_not_yaml_say_which_line() -> None:
    assert "at line 4" in rule_error("version: 1\nrules:\n  - name: r\n    job: {kind: [x}\n")


@pytest.mark.parametrize("text", ["- a\n- b\n", "just words\n", "7\n"])
def test_rules_that_are_not_a_mapping_are_refused(text: str) -> None:
    assert "must be a mapping with 'rules:'" in rule_error(text)


def test_an_empty_rules_file_has_no_rules() -> None:
    assert parse("").all == []


def test_a_missing_rules_file_is_a_rule_error_naming_it(tmp_path: Path) -> None:
    with pytest.raises(RuleError, match=r"nope\.yaml"):
        Rules.load(tmp_path / "nope.yaml")


def test_an_unknown_top_level_field_is_named() -> None:
    message = rule_error("rule: []\n")

    assert "unknown field 'rule'" in message


def test_a_rule_with_two_triggers_is_refused_naming_them() -> None:
    message = rule_error(one_rule("queue: jobs\n    schedule: '0 0 2 * * *'"))

    assert "rule 'r' needs exactly one of blob, queue or schedule" in message
    assert "queue, schedule" in message


def test_a_rule_with_no_trigger_is_refused() -> None:
    message = rule_error("rules:\n  - name: r\n    job: {kind: train}\n")

    assert "exactly one of blob, queue or schedule (it has none)" in message


def test_duplicate_rule_names_are_refused_naming_them() -> None:
    text = one_rule("queue: jobs") + one_rule("queue: more").removeprefix("rules:\n")

    assert "repeated: r" in rule_error(text)


def test_an_unknown_template_field_is_refused_listing_the_allowed_ones() -> None:
    message = rule_error(one_rule("blob: incoming/{name}.csv", "{kind: train, name: 'x-{nope}'}"))

    assert "'{nope}'" in message
    for allowed in ("blob", "date", "etag", "name", "rule", "uri"):
        assert allowed in message


def test_a_schedule_rule_has_no_blob_fields_to_fill() -> None:
    message = rule_error(one_rule("schedule: '0 0 2 * * *'", "{kind: train, name: 'x-{name}'}"))

    assert "'{name}'" in message


def test_an_unknown_template_field_in_defaults_is_refused_at_load() -> None:
    text = "defaults: {name: 'x-{nope}'}\n" + one_rule("blob: incoming/{name}.csv")

    assert "{nope}" in rule_error(text)


@pytest.mark.parametrize(
    "template",
    ["x-{name!r}", "x-{name.upper}", "x-{name:>10}", "x-{name[0]}", "x-{0}", "x-{}"],
)
def test_template_fields_must_be_plain_names(template: str) -> None:
    message = rule_error(one_rule("blob: incoming/{name}.csv", f"{{name: '{template}'}}"))

    assert "must be a plain name" in message


def test_unbalanced_braces_in_a_template_are_refused() -> None:
    message = rule_error(one_rule("blob: incoming/{name}.csv", "{name: 'x-{name'}"))

    assert "bad braces" in message


def test_a_blob_pattern_must_start_with_a_fixed_container() -> None:
    assert "fixed container" in rule_error(one_rule("blob: '{name}/x.csv'"))


def test_a_blob_pattern_that_escapes_its_prefix_is_refused() -> None:
    with pytest.raises(BadInput, match=r"'\.\.'"):
        parse(one_rule("blob: 'incoming/../x/{name}.csv'"))


def test_an_escaping_blob_pattern_is_refused_naming_the_pattern_as_written() -> None:
    with pytest.raises(BadInput) as caught:
        parse(one_rule("blob: 'incoming/../x/{name}.csv'"))

    assert "'incoming/../x/{name}.csv'" in str(caught.value)
    assert "rule" in str(caught.value)


def test_a_five_field_cron_is_refused_asking_for_six_field_ncrontab() -> None:
    message = rule_error(one_rule("schedule: '0 2 * * *'"))

    assert "6-field NCRONTAB" in message
    assert "'0 2 * * *'" in message


@pytest.mark.parametrize("cron", ["0 0 25 * * *", "a b c d e f", "61 * * * * *"])
def test_an_invalid_cron_is_refused(cron: str) -> None:
    assert f"'{cron}'" in rule_error(one_rule(f"schedule: '{cron}'"))


def test_a_bad_queue_name_is_refused() -> None:
    assert "rules.0.queue" in rule_error(one_rule("queue: Bad_Queue"))


def test_a_queue_rule_is_found_by_its_queue() -> None:
    rules = parse(one_rule("queue: jobs"))

    assert rules.queue_rule("jobs") is rules.all[0]
    assert rules.queue_rule("other") is None


# --- schedules -----------------------------------------------------------------------------

EVERY_FIVE = one_rule("schedule: '0 */5 * * * *'") + (
    "  - name: upload\n    blob: incoming/{name}.csv\n"
    "    job: {kind: train, code: ./c, entrypoint: t.py}\n"
)


def test_the_latest_schedule_time_within_catch_up_is_due() -> None:
    now = datetime(2024, 1, 1, 12, 7, 30, tzinfo=UTC)

    due = list(parse(EVERY_FIVE).due(now, timedelta(minutes=10)))

    assert [(rule.name, at) for rule, at in due] == [("r", datetime(2024, 1, 1, 12, 5, tzinfo=UTC))]


def test_nothing_is_due_when_the_last_time_is_older_than_catch_up() -> None:
    now = datetime(2024, 1, 1, 12, 7, 30, tzinfo=UTC)

    assert list(parse(EVERY_FIVE).due(now, timedelta(minutes=2))) == []


def test_exactly_on_the_schedule_time_counts_as_due() -> None:
    now = datetime(2024, 1, 1, 12, 5, 0, tzinfo=UTC)

    due = list(parse(EVERY_FIVE).due(now, timedelta(seconds=1)))

    assert [at for _, at in due] == [now]


def test_just_before_the_schedule_time_the_previous_one_is_due() -> None:
    now = datetime(2024, 1, 1, 12, 4, 59, 999000, tzinfo=UTC)

    due = list(parse(EVERY_FIVE).due(now, timedelta(minutes=10)))

    assert [at for _, at in due] == [datetime(2024, 1, 1, 12, 0, tzinfo=UTC)]


def test_a_schedule_fills_date_from_the_scheduled_time() -> None:
    rules = parse(
        one_rule(
            "schedule: '0 0 2 * * *'",
            "{kind: train, name: 'nightly-{date}', code: ./c, entrypoint: t.py}",
        )
    )
    [(rule, at)] = rules.due(datetime(2024, 3, 5, 2, 0, 1, tzinfo=UTC), timedelta(minutes=5))

    spec = rules.fill(rule, {"scheduled": at.isoformat()}, at)

    assert spec.name == "nightly-2024-03-05"
