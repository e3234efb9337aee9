"""The HTTP front over a real server on loopback: keys, limits and bad bodies, each a clear 4xx."""

from __future__ import annotations

import io
import json
from collections.abc import Iterator
from pathlib import Path

import pyarrow as pa
import pyarrow.ipc as ipc
import pyarrow.parquet as pq
import pytest

from serving.serving import KEY, NAME, OTHER_KEY, Client, Registry, metric, rows

ARROW = "application/vnd.apache.arrow.stream"


@pytest.fixture(scope="module")
def client(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Client]:
    registry = Registry(tmp_path_factory.mktemp("front"))
    registry.publish(2.0, alias="production")
    devhost_keys = registry.settings.home / "devhost-keys.json"  # another service's keys
    devhost_keys.write_text(json.dumps({"functionKeys": {"default": "the-dev-hosts-own-key"}}))
    with registry.serve(max_body_bytes=20_000, max_rows=50) as client:
        yield client


def post(client: Client, body: bytes, content_type: str, **headers: str):  # type: ignore[no-untyped-def]
    return client.http.post(
        f"/v1/models/{NAME}:predict",
        content=body,
        headers={"x-ephemerid-key": KEY, "content-type": content_type, **headers},
    )


def test_a_key_is_needed_and_each_named_key_opens_it(client: Client) -> None:
    assert client.predict(rows(1), key="").status_code == 401
    assert client.predict(rows(1), key="not-a-key").status_code == 401
    assert client.predict(rows(1), key="the-dev-hosts-own-key").status_code == 401
    assert client.get("/metrics", key="").status_code == 401
    assert client.get(f"/v1/models/{NAME}", key="").status_code == 401
    assert client.predict(rows(1), key=OTHER_KEY).status_code == 200
    bearer = client.http.post(
        f"/v1/models/{NAME}:predict",
        json={"rows": rows(1)},
        headers={"authorization": f"Bearer {KEY}"},
    )
    assert bearer.status_code == 200


def test_healthz_needs_no_key_and_names_the_version_serving(client: Client) -> None:
    answer = client.http.get("/healthz")

    assert answer.status_code == 200
    (version,) = answer.json()["versions"]
    assert version["version"] == 1 and version["serving"] and version["loaded"]
    assert version["error"] == ""


def test_an_answer_says_which_version_served_it_and_has_the_callers_rows(client: Client) -> None:
    answer = client.predict(rows(3, 4))

    assert answer.status_code == 200
    assert answer.headers["x-ephemerid-model-version"] == "1"
    assert answer.json() == {
        "model": NAME,
        "version": 1,
        "rows": [{"id": 3, "y": 6.0}, {"id": 4, "y": 8.0}],
    }


def test_the_model_route_gives_version_alias_and_input_schema(client: Client) -> None:
    answer = client.get(f"/v1/models/{NAME}")

    assert answer.status_code == 200
    body = answer.json()
    assert (body["version"], body["alias"]) == (1, "production")
    assert body["input_schema"] == [
        {"name": "id", "type": "int64"},
        {"name": "x", "type": "double"},
    ]


def test_columns_arrow_and_parquet_bodies_are_taken_and_arrow_is_answered_when_asked(
    client: Client,
) -> None:
    columns = client.http.post(
        f"/v1/models/{NAME}:predict",
        json={"columns": {"id": [1, 2], "x": [1.0, 2.5]}},
        headers={"x-ephemerid-key": KEY},
    )
    assert [r["y"] for r in columns.json()["rows"]] == [2.0, 5.0]
    table = pa.table({"id": pa.array([7], pa.int64()), "x": pa.array([1.5])})
    sink = pa.BufferOutputStream()
    with ipc.new_stream(sink, table.schema) as writer:
        writer.write_table(table)
    arrow = post(client, sink.getvalue().to_pybytes(), ARROW, accept=ARROW)
    assert arrow.status_code == 200 and arrow.headers["content-type"] == ARROW
    assert ipc.open_stream(arrow.content).read_all().to_pylist() == [{"id": 7, "y": 3.0}]
    buffer = io.BytesIO()
    pq.write_table(table, buffer)
    parquet = post(client, buffer.getvalue(), "application/vnd.apache.parquet")
    assert parquet.json()["rows"] == [{"id": 7, "y": 3.0}]


@pytest.mark.parametrize(
    ("body", "named"),
    [
        ({"rows": [{"id": 1}]}, "missing field(s) x"),
        ({"rows": [{"id": 1, "x": 1.0, "colour": "red"}]}, "unknown field(s) colour"),
        ({"rows": [{"id": 1, "x": "lots"}]}, "field 'x' row 0 is not a number"),
        ({"rows": [{"id": 1, "x": 1.0}, {"id": 2}]}, "row 1 lacks field(s) x"),
        ({"columns": {"id": [1], "x": [True]}}, "field 'x' row 0 is not a number"),
        ({"rows": []}, "the batch is empty"),
        ({"columns": {"id": [], "x": []}}, "the batch is empty"),
        ({"data": []}, '{"rows"'),
    ],
)
def test_a_body_that_does_not_fit_the_model_is_400_naming_the_field(
    client: Client, body: dict, named: str
) -> None:
    answer = client.http.post(
        f"/v1/models/{NAME}:predict", json=body, headers={"x-ephemerid-key": KEY}
    )

    assert answer.status_code == 400
    assert named in answer.json()["error"]


def test_malformed_json_is_400_and_an_arrow_column_of_text_is_refused_by_name(
    client: Client,
) -> None:
    malformed = post(client, b'{"rows": [', "application/json")
    assert malformed.status_code == 400 and "not JSON" in malformed.json()["error"]
    table = pa.table({"id": [1], "x": ["text"]})
    sink = pa.BufferOutputStream()
    with ipc.new_stream(sink, table.schema) as writer:
        writer.write_table(table)
    text = post(client, sink.getvalue().to_pybytes(), ARROW)
    assert text.status_code == 400 and "field 'x'" in text.json()["error"]
    broken = post(client, b"not arrow at all", ARROW)
    assert broken.status_code == 400 and "Arrow" in broken.json()["error"]


def test_a_content_type_it_does_not_take_is_415_naming_those_it_does(client: Client) -> None:
    answer = post(client, b"id,x\n1,2\n", "text/csv")

    assert answer.status_code == 415
    assert "application/json" in answer.json()["error"]


def test_a_body_or_a_batch_over_the_limits_is_413(client: Client) -> None:
    big = client.http.post(
        f"/v1/models/{NAME}:predict",
        content=b'{"rows": [' + b" " * 30_000 + b"]}",
        headers={"x-ephemerid-key": KEY, "content-type": "application/json"},
    )
    assert big.status_code == 413 and "bytes" in big.json()["error"]
    many = client.predict(rows(*range(51)))
    assert many.status_code == 413 and "51 rows" in many.json()["error"]
    assert client.predict(rows(*range(50))).status_code == 200


def test_an_unknown_model_or_version_is_404(client: Client) -> None:
    model = client.http.post(
        "/v1/models/nosuch:predict", json={"rows": rows(1)}, headers={"x-ephemerid-key": KEY}
    )
    assert model.status_code == 404 and "no model 'nosuch'" in model.json()["error"]
    version = client.http.post(
        f"/v1/models/{NAME}/versions/9:predict",
        json={"rows": rows(1)},
        headers={"x-ephemerid-key": KEY},
    )
    assert version.status_code == 404 and "version 9" in version.json()["error"]
    assert client.get("/v1/models/nosuch").status_code == 404
    served = client.http.post(
        f"/v1/models/{NAME}/versions/1:predict",
        json={"rows": rows(1)},
        headers={"x-ephemerid-key": KEY},
    )
    assert served.status_code == 200


def test_a_predict_that_raises_is_a_short_502_without_a_traceback(client: Client) -> None:
    answer = client.predict([{"id": 1, "x": -1.0}])

    assert answer.status_code == 502
    error = answer.json()["error"]
    assert "predict raised ValueError: x = -1 is refused" in error
    assert "Traceback" not in answer.text and 'File "' not in answer.text
    assert client.predict(rows(2)).status_code == 200  # the worker goes on


def test_metrics_count_requests_and_errors_per_version(client: Client) -> None:
    before = metric(
        client.get("/metrics").text, "ephemerid_serving_requests_total", model=NAME, version="1"
    )
    client.predict(rows(1))
    client.predict([{"id": 1, "x": -1.0}])
    text = client.get("/metrics").text

    labels = {"model": NAME, "version": "1"}
    assert metric(text, "ephemerid_serving_requests_total", **labels) == before + 2
    assert metric(text, "ephemerid_serving_errors_total", **labels, status="502") >= 1
    assert metric(text, "ephemerid_serving_request_seconds_count", **labels) == before + 2
    assert "# TYPE ephemerid_serving_request_seconds histogram" in text


def test_each_key_has_its_own_rate_limit_answered_with_429_and_retry_after(
    tmp_path: Path,
) -> None:
    registry = Registry(tmp_path)
    registry.publish(1.0, alias="production")
    with registry.serve(rate_per_s=0.01, burst=2) as client:
        answers = [client.predict(rows(1)).status_code for _ in range(3)]
        limited = client.predict(rows(1))
        other = client.predict(rows(1), key=OTHER_KEY)

    assert answers == [200, 200, 429]
    assert limited.status_code == 429
    assert int(limited.headers["retry-after"]) >= 1
    assert "alice" in limited.json()["error"]
    assert other.status_code == 200
