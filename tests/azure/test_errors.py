"""The one table from Azure SDK exceptions to ephemerid's, case by case.

The exceptions are the SDK's own, built on real ``HttpResponse`` objects (azure-core's requests
transport response over a ``requests.Response``), as the SDK raises them from a pipeline.
"""

from __future__ import annotations

import json
from typing import Any

import pytest
import requests
from azure.core import exceptions as sdk
from azure.core.pipeline.transport import HttpRequest, RequestsTransportResponse

from ephemerid.azure.errors import describe, error_tree, retry_after_s, sdk_errors, transient
from ephemerid.errors import (
    AccessDenied,
    ComputeError,
    Conflict,
    EphemeridError,
    NotFound,
    Unavailable,
)

URL = "https://ephstore.table.core.windows.net/jobs(PartitionKey='train-0',RowKey='job')"


def response(
    status: int,
    body: dict[str, Any] | None = None,
    method: str = "GET",
    headers: dict[str, str] | None = None,
) -> RequestsTransportResponse:
    raw = requests.Response()
    raw.status_code = status
    raw.reason = requests.status_codes._codes[status][0].upper()  # type: ignore[attr-defined]
    raw._content = json.dumps(body or {"error": {"code": "Code", "message": "text"}}).encode()
    raw.headers["Content-Type"] = "application/json"
    raw.headers.update(headers or {})
    raw.url = URL
    return RequestsTransportResponse(HttpRequest(method, URL), raw)


def mapped(exc: BaseException, **kwargs: Any) -> EphemeridError:
    with pytest.raises(EphemeridError) as caught, sdk_errors("reading job train-0", **kwargs):
        raise exc
    assert caught.value.__cause__ is exc
    return caught.value


CASES = [
    (sdk.ResourceNotFoundError(response=response(404)), NotFound),
    (sdk.HttpResponseError(response=response(404)), NotFound),
    (sdk.ResourceExistsError(response=response(409)), Conflict),
    (sdk.ResourceModifiedError(response=response(412)), Conflict),
    (sdk.HttpResponseError(response=response(409)), Conflict),
    (sdk.HttpResponseError(response=response(412)), Conflict),
    (sdk.ClientAuthenticationError(response=response(401)), AccessDenied),
    (sdk.HttpResponseError(response=response(401)), AccessDenied),
    (sdk.HttpResponseError(response=response(403)), AccessDenied),
    (sdk.HttpResponseError(response=response(408)), Unavailable),
    (sdk.HttpResponseError(response=response(429)), Unavailable),
    (sdk.HttpResponseError(response=response(500)), Unavailable),
    (sdk.HttpResponseError(response=response(502)), Unavailable),
    (sdk.HttpResponseError(response=response(503)), Unavailable),
    (sdk.HttpResponseError(response=response(504)), Unavailable),
    (sdk.ServiceRequestError("connection refused"), Unavailable),
    (sdk.ServiceRequestTimeoutError("connect timed out"), Unavailable),
    (sdk.ServiceResponseError("connection reset by peer"), Unavailable),
    (sdk.ServiceResponseTimeoutError("read timed out"), Unavailable),
    (sdk.IncompleteReadError("the body broke off"), Unavailable),
    (ConnectionResetError(104, "Connection reset by peer"), Unavailable),
    (TimeoutError("timed out"), Unavailable),
    (sdk.HttpResponseError(response=response(400)), EphemeridError),
    (sdk.AzureError("a poller lost its way"), EphemeridError),
]


@pytest.mark.parametrize(("exc", "ours"), CASES, ids=lambda v: getattr(v, "__name__", None))
def test_each_sdk_exception_becomes_one_of_ours(exc: BaseException, ours: type) -> None:
    assert type(mapped(exc)) is ours


@pytest.mark.parametrize("status", [429, 500, 503])
def test_a_transient_answer_is_unavailable_and_says_it_is_retried(status: int) -> None:
    error = mapped(sdk.HttpResponseError(response=response(status)))

    assert isinstance(error, Unavailable)
    assert not isinstance(error, NotFound)
    assert str(error).startswith("reading job train-0 failed: ")
    assert "transient" in str(error) and "retried" in str(error)
    assert f"HTTP {status}" in str(error)


def test_access_denied_names_the_role_to_grant() -> None:
    error = mapped(
        sdk.HttpResponseError(response=response(403)), role="Storage Table Data Contributor"
    )

    assert isinstance(error, AccessDenied)
    assert "reading job train-0" in str(error)
    assert "grant it Storage Table Data Contributor" in str(error)


def test_what_is_not_a_definite_answer_falls_to_the_callers_default() -> None:
    bad_request = sdk.HttpResponseError(response=response(400))

    assert type(mapped(bad_request, default=ComputeError)) is ComputeError
    assert type(mapped(sdk.HttpResponseError(response=response(404)), default=ComputeError)) is (
        NotFound
    )
    assert type(mapped(sdk.HttpResponseError(response=response(503)), default=ComputeError)) is (
        Unavailable
    )


def test_ours_and_errors_that_are_no_sdks_pass_through_unchanged() -> None:
    ours = Conflict("job train-0 changed since version 3")
    with pytest.raises(Conflict) as caught, sdk_errors("updating job train-0"):
        raise ours
    assert caught.value is ours
    with pytest.raises(KeyError), sdk_errors("reading job train-0"):
        raise KeyError("Chunks")


def test_an_arm_answer_is_read_down_to_its_nested_details() -> None:
    nested = {
        "error": {
            "code": "ResourceOperationFailure",
            "message": "The resource operation completed with terminal state 'Failed'.",
            "details": [{"code": "AllocationFailed", "message": "no capacity for NC4as_T4_v3"}],
        }
    }
    exc = sdk.HttpResponseError(response=response(200, nested))

    assert [e["code"] for e in error_tree(exc)] == ["ResourceOperationFailure", "AllocationFailed"]
    assert "AllocationFailed: no capacity for NC4as_T4_v3" in describe(exc)
    assert not transient(exc)  # a definite answer: capacity moves on, it is not sent again
    assert not transient(sdk.HttpResponseError(response=response(400)))
    assert transient(sdk.ServiceResponseError("reset"))


def arm_error(http: int, code: str, method: str = "GET", status: str = "") -> sdk.HttpResponseError:
    """An ARM answer with error ``code``; ``status``: a long-running operation's, as polled."""
    body: dict[str, Any] = {"error": {"code": code, "message": f"simulated {code}"}}
    if status:
        body["status"] = status
    return sdk.HttpResponseError(response=response(http, body, method))


def test_what_may_succeed_if_sent_again_is_transient_and_a_definite_answer_is_not() -> None:
    # a retryable code, on the operation's status (200) or its Location poll (409)
    assert transient(arm_error(200, "InternalExecutionError", status="Failed"))
    assert transient(arm_error(409, "RetryableError"))
    # a 409 on a DELETE: another operation on the VM is in progress
    assert transient(arm_error(409, "Conflict", "DELETE"))
    assert transient(arm_error(409, "OperationNotAllowed", "DELETE"))
    # a create our own delete cancelled, a failed operation that names its cause, a PUT conflict
    assert not transient(arm_error(200, "OperationPreempted", status="Canceled"))
    assert not transient(arm_error(200, "InvalidParameter", status="Failed"))
    assert not transient(arm_error(409, "OperationNotAllowed", "PUT"))


@pytest.mark.parametrize(
    ("headers", "seconds"),
    [
        ({"Retry-After": "40"}, 40.0),
        ({"Retry-After": "0.5"}, 0.5),
        ({"retry-after-ms": "1500"}, 1.5),
        ({"x-ms-retry-after-ms": "250"}, 0.25),
        ({"Retry-After": "Wed, 01 Jan 2020 00:00:00 GMT"}, 0.0),  # a date in the past: now
        ({}, None),
    ],
)
def test_retry_after_is_read_as_seconds_milliseconds_or_a_date(
    headers: dict[str, str], seconds: float | None
) -> None:
    exc = sdk.HttpResponseError(response=response(429, headers=headers))

    assert retry_after_s(exc) == seconds
