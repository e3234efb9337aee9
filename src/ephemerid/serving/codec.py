"""Request bodies in, answers out: JSON rows or columns, Arrow IPC streams and Parquet files.

``read_body`` turns a body into a table by its content type, checked against the model's input
fields: a field missing, one the model does not take, or a value that is not a number where the
model takes numbers is a ``BodyError`` naming it (400); an unknown content type is 415. JSON
rows answer as JSON rows (``{"model", "version", "rows"}``); an ``Accept`` of Arrow, as an Arrow
IPC stream.
"""

from __future__ import annotations

import functools
import json
from collections.abc import Sequence
from typing import Any

import pyarrow as pa
import pyarrow.ipc as ipc
import pyarrow.parquet as pq

from ephemerid.serving.process import Field

JSON = "application/json"
ARROW = "application/vnd.apache.arrow.stream"
PARQUET = "application/vnd.apache.parquet"
PARQUET_TYPES = (PARQUET, "application/x-parquet")
TYPES = (JSON, ARROW, *PARQUET_TYPES)
SHOWN = 5  # names listed in a message before "..."
_NUMBERS = (int, float)  # exactly: a bool is no number here
_TYPES_OF_NUMBERS = frozenset(_NUMBERS)


class BodyError(Exception):
    """A body that cannot be scored: ``status`` (400, 413, 415) and a message naming why."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status


def media_type(header: str) -> str:
    return header.split(";", 1)[0].strip().lower()


def read_body(body: bytes, content_type: str, fields: Sequence[Field], max_rows: int) -> pa.Table:
    kind = media_type(content_type)
    if kind == JSON:  # built in the model's fields, order and types
        return _counted(_from_json(body, fields), max_rows)
    if kind == ARROW:
        table = _from_arrow(body)
    elif kind in PARQUET_TYPES:
        table = _from_parquet(body)
    else:
        raise BodyError(
            415,
            f"content type '{kind or 'none'}' is not taken: send {JSON} "
            f'({{"rows": [...]}} or {{"columns": {{...}}}}), {ARROW} or {PARQUET}',
        )
    return conform(_counted(table, max_rows), fields)


def _counted(table: pa.Table, max_rows: int) -> pa.Table:
    if table.num_rows == 0:
        raise BodyError(400, "the batch is empty: send at least one row")
    if table.num_rows > max_rows:
        raise BodyError(
            413,
            f"{table.num_rows} rows is more than this service takes in one request "
            f"({max_rows}): split the batch",
        )
    return table


def _from_json(body: bytes, fields: Sequence[Field]) -> pa.Table:
    try:
        data = json.loads(body)
    except (ValueError, UnicodeDecodeError) as exc:
        raise BodyError(400, f"the body is not JSON: {exc}") from None
    if not isinstance(data, dict) or not ({"rows", "columns"} & set(data)):
        raise BodyError(400, 'the body must be {"rows": [{...}, ...]} or {"columns": {...}}')
    if "rows" in data:
        return _rows(data["rows"], fields)
    return _columns(data["columns"], fields)


def _rows(rows: Any, fields: Sequence[Field]) -> pa.Table:
    if not isinstance(rows, list):
        raise BodyError(400, '"rows" must be a list of objects, one per row')
    if not rows:
        raise BodyError(400, "the batch is empty: send at least one row")
    if not all(isinstance(row, dict) for row in rows):
        bad = next(i for i, row in enumerate(rows) if not isinstance(row, dict))
        raise BodyError(400, f"row {bad} is not an object of field -> value")
    names = [f.name for f in fields] if fields else list(rows[0])
    _check_names(set().union(*(row.keys() for row in rows)), names, fields)
    width = len(names)
    if any(len(row) != width for row in rows):
        index = next(i for i, row in enumerate(rows) if len(row) != width)
        lacking = [n for n in names if n not in rows[index]]
        raise BodyError(400, f"row {index} lacks field(s) {_listed(lacking)}")
    return _columns({name: [row[name] for row in rows] for name in names}, fields)


def _columns(columns: Any, fields: Sequence[Field]) -> pa.Table:
    if not isinstance(columns, dict) or not all(isinstance(v, list) for v in columns.values()):
        raise BodyError(400, '"columns" must be an object of field -> list of values')
    if fields:
        _check_names(set(columns), [f.name for f in fields], fields)
    lengths = {len(v) for v in columns.values()}
    if len(lengths) > 1:
        raise BodyError(400, "the columns differ in length: give each field one value per row")
    chosen = fields or [Field(name, None) for name in columns]
    for field in chosen:
        values = columns[field.name]
        if _numeric(field.type) and not _TYPES_OF_NUMBERS.issuperset(map(type, values)):
            index, value = next((i, v) for i, v in enumerate(values) if type(v) not in _NUMBERS)
            raise BodyError(400, f"field '{field.name}' row {index} is not a number: {value!r:.40}")
        if _integer(field.type) and float in set(map(type, values)):  # Arrow cuts 1.5 to 1
            for index, value in enumerate(values):
                if type(value) is float and not value.is_integer():
                    whole = f"field '{field.name}' row {index} is not a whole number"
                    raise BodyError(400, f"{whole}: {value!r:.40}")
    return pa.table(_arrays(columns, chosen), names=[f.name for f in chosen])


def _arrays(columns: dict[str, list[Any]], fields: Sequence[Field]) -> list[pa.Array]:
    """The columns as Arrow arrays: those of one declared type converted in one call (each
    ``pa.array`` call costs far more than its values here) and sliced apart, zero-copy."""
    by_type: dict[str | None, list[Field]] = {}
    for field in fields:
        by_type.setdefault(field.type if _type(field.type) is not None else None, []).append(field)
    arrays: dict[str, pa.Array] = {}
    for name, group in by_type.items():
        if name is None or len(group) == 1:
            arrays.update((f.name, _array(columns[f.name], f)) for f in group)
            continue
        flat = [v for f in group for v in columns[f.name]]
        try:
            joined = pa.array(flat, type=_type(name))
        except (pa.ArrowException, ValueError, TypeError, OverflowError):  # which one: name it
            arrays.update((f.name, _array(columns[f.name], f)) for f in group)
            continue
        size = len(columns[group[0].name])
        arrays.update((f.name, joined.slice(i * size, size)) for i, f in enumerate(group))
    return [arrays[f.name] for f in fields]


def _array(values: list[Any], field: Field) -> pa.Array:
    try:
        return pa.array(values, type=_type(field.type))
    except (pa.ArrowException, ValueError, TypeError, OverflowError) as exc:
        raise BodyError(400, f"field '{field.name}' has values of mixed types: {exc}") from None


def _from_arrow(body: bytes) -> pa.Table:
    try:
        return ipc.open_stream(pa.py_buffer(body)).read_all()
    except (pa.ArrowException, ValueError, OSError) as exc:
        raise BodyError(400, f"the body is not an Arrow IPC stream: {exc}") from None


def _from_parquet(body: bytes) -> pa.Table:
    try:
        return pq.read_table(pa.BufferReader(body))
    except (pa.ArrowException, ValueError, OSError) as exc:
        raise BodyError(400, f"the body is not a Parquet file: {exc}") from None


def conform(table: pa.Table, fields: Sequence[Field]) -> pa.Table:
    """``table`` with the model's fields, in its order and types; BodyError naming misfits."""
    if not fields:
        return table
    _check_names(set(table.column_names), [f.name for f in fields], fields)
    columns = []
    for field in fields:
        column = table.column(field.name)
        want = _type(field.type)
        if want is not None and column.type != want:
            numeric = pa.types.is_integer(column.type) or pa.types.is_floating(column.type)
            if _numeric(field.type) and not numeric:
                raise BodyError(
                    400, f"field '{field.name}' is {column.type}, not a number ({field.type})"
                )
            try:
                column = column.cast(want)
            except (pa.ArrowException, ValueError) as exc:
                raise BodyError(400, f"field '{field.name}' is not {want}: {exc}") from None
        columns.append(column)
    return pa.table(columns, names=[f.name for f in fields])


def _check_names(given: set[str], names: Sequence[str], fields: Sequence[Field]) -> None:
    if not fields:
        return
    missing = [n for n in names if n not in given]
    extra = sorted(given - set(names))
    if missing or extra:
        parts = []
        if missing:
            parts.append(f"missing field(s) {_listed(missing)}")
        if extra:
            parts.append(f"unknown field(s) {_listed(extra)}")
        raise BodyError(400, f"{'; '.join(parts)}: the model takes {_listed(list(names))}")


def _listed(names: Sequence[str]) -> str:
    shown = ", ".join(names[:SHOWN])
    return shown + (f" and {len(names) - SHOWN} more" if len(names) > SHOWN else "")


@functools.cache
def _type(name: str | None) -> pa.DataType | None:
    if name is None:
        return None
    try:
        return pa.type_for_alias(name)
    except ValueError:
        return None


@functools.cache
def _integer(name: str | None) -> bool:
    kind = _type(name)
    return kind is not None and pa.types.is_integer(kind)


@functools.cache
def _numeric(name: str | None) -> bool:
    kind = _type(name)
    return kind is not None and (pa.types.is_integer(kind) or pa.types.is_floating(kind))


def to_json(name: str, version: int, table: pa.Table) -> bytes:
    return json.dumps({"model": name, "version": version, "rows": table.to_pylist()}).encode()


def to_arrow(table: pa.Table) -> bytes:
    sink = pa.BufferOutputStream()
    with ipc.new_stream(sink, table.schema) as writer:
        writer.write_table(table)
    return sink.getvalue().to_pybytes()


def wants_arrow(accept: str) -> bool:
    return ARROW in accept.lower()
