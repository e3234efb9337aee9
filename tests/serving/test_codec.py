"""Bodies into tables: columns of one type are converted together, and misfits still named."""

from __future__ import annotations

import json

import pyarrow as pa
import pytest

from ephemerid.serving import codec
from ephemerid.serving.process import Field

FIELDS = [Field("a", "double"), Field("n", "int64"), Field("b", "double"), Field("m", "int64")]


def read(body: object, fields: list[Field] = FIELDS) -> pa.Table:
    return codec.read_body(json.dumps(body).encode(), codec.JSON, fields, 100)


def test_rows_become_the_models_columns_in_its_order_and_types() -> None:
    rows = [{"m": 1, "b": 2, "n": 3, "a": 0.5}, {"a": 1.5, "n": -4, "b": 2.5, "m": 2**40}]

    table = read({"rows": rows})

    assert table.schema == pa.schema(
        [("a", pa.float64()), ("n", pa.int64()), ("b", pa.float64()), ("m", pa.int64())]
    )
    assert table.to_pylist() == [
        {"a": 0.5, "n": 3, "b": 2.0, "m": 1},
        {"a": 1.5, "n": -4, "b": 2.5, "m": 2**40},
    ]
    assert read({"columns": {k: [r[k] for r in rows] for k in "abmn"}}).equals(table)


def test_a_value_that_does_not_fit_its_type_is_named_though_its_type_is_converted_together() -> (
    None
):
    with pytest.raises(codec.BodyError, match="field 'm' has values of mixed types") as raised:
        read({"rows": [{"a": 1.0, "n": 1, "b": 2.0, "m": 2**70}]})  # over int64
    assert raised.value.status == 400
    with pytest.raises(codec.BodyError, match="field 'b' row 1 is not a number"):
        read({"columns": {"a": [1.0, 2.0], "n": [1, 2], "b": [1.0, None], "m": [1, 2]}})
    with pytest.raises(codec.BodyError, match=r"field 'm' row 0 is not a whole number: 1\.5"):
        read({"rows": [{"a": 1.0, "n": 1, "b": 2.0, "m": 1.5}]})  # not cut to 1
    assert read({"rows": [{"a": 1.0, "n": 2.0, "b": 2.0, "m": 1}]})["n"].to_pylist() == [2]
    with pytest.raises(codec.BodyError, match="row 1 lacks field"):
        read({"rows": [{"a": 1.0, "n": 1, "b": 2.0, "m": 1}, {"a": 1.0}]})


def test_fields_of_no_known_type_are_taken_as_given() -> None:
    fields = [Field("x", None), Field("y", None), Field("z", "no-such-type")]

    table = read({"rows": [{"x": 1, "y": "text", "z": 2.5}]}, fields)

    assert table.to_pylist() == [{"x": 1, "y": "text", "z": 2.5}]
    assert table.schema.field("y").type == pa.string()
