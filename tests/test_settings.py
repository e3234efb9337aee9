"""Settings: every EPHEMERID_* setting read in one place, bad values refused at start by name."""

from __future__ import annotations

import math
import os
import subprocess
import sys
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

from drive import cleaned_up
from ephemerid.app import build_service
from ephemerid.artifacts.blob import BlobArtifactStore
from ephemerid.azure.connection import storage_connection
from ephemerid.errors import BadInput
from ephemerid.settings import Settings
from ephemerid.store.table import TableJobStore

EPH = Path(sys.executable).with_name("eph")
HOME = {"EPHEMERID_HOME": "/tmp/ephemerid-settings-test"}
AZURE_VM = {
    "EPHEMERID_AZURE_SUBSCRIPTION_ID": "00000000-0000-4000-8000-000000000000",
    "EPHEMERID_COMPUTE_RESOURCE_GROUP": "eph-jobs",
    "EPHEMERID_COMPUTE_SUBNET_ID": "/subscriptions/s/resourceGroups/n/subnets/{region}",
    "EPHEMERID_COMPUTE_REGIONS": "eastus, westus2:2",
    "EPHEMERID_VM_IDENTITY_ID": "/subscriptions/s/userAssignedIdentities/eph-vm",
}
AZURE_ML = {
    "EPHEMERID_AZURE_SUBSCRIPTION_ID": "00000000-0000-4000-8000-000000000000",
    "EPHEMERID_AML_RESOURCE_GROUP": "eph-ml",
    "EPHEMERID_AML_WORKSPACE": "mlw",
    "EPHEMERID_AML_CLUSTER": "gpu",
    "EPHEMERID_AML_ENVIRONMENT": "azureml:ephemerid-runner:1",
}
SECONDS = [
    "EPHEMERID_HEARTBEAT_S",
    "EPHEMERID_HEARTBEAT_TIMEOUT_S",
    "EPHEMERID_PROVISION_TIMEOUT_S",
    "EPHEMERID_GRACE_S",
    "EPHEMERID_CAPACITY_MAX_WAIT_S",
    "EPHEMERID_CAPACITY_BACKOFF_S",
    "EPHEMERID_ARM_RETRY_S",
    "EPHEMERID_AML_IDLE_S",
    "EPHEMERID_AML_FINISH_WAIT_S",
]
CLOUD = {**HOME, **AZURE_VM, **AZURE_ML}  # both backends configured: every setting is read
SECRET = "DefaultEndpointsProtocol=http;AccountName=devstoreaccount1;AccountKey=c2VjcmV0LWtleQ=="


def refusal(env: dict[str, str]) -> BadInput:
    with pytest.raises(BadInput) as caught:
        Settings.from_env(env)
    return caught.value


# -- defaults ---------------------------------------------------------------------------------


def test_with_no_settings_everything_is_local_under_home_with_the_usual_defaults(
    tmp_path: Path,
) -> None:
    settings = Settings.from_env({}, home=tmp_path / "home")

    home = (tmp_path / "home").resolve()
    assert settings.home == home
    assert settings.store_url == f"sqlite://{home / 'jobs.db'}"
    assert settings.artifacts_url == f"file://{home / 'bucket'}"
    assert settings.rules_path == Path("ephemerid.yaml")
    assert (settings.backend, settings.jobs_queue, settings.local_slots) == ("local", "jobs", None)
    assert (settings.heartbeat_s, settings.heartbeat_timeout_s) == (5.0, 120.0)
    assert (settings.provision_timeout_s, settings.grace_s) == (600.0, 10.0)
    assert (settings.log_limit_bytes, settings.code_limit_bytes) == (10 * 2**20, 50 * 2**20)
    assert (settings.eviction_retries, settings.price_table) == (3, None)
    assert (settings.azure_vm, settings.azure_ml) == (None, None)
    assert settings.storage.as_env() == {}


def test_home_defaults_to_dot_ephemerid_and_an_empty_setting_counts_as_unset() -> None:
    settings = Settings.from_env({"EPHEMERID_HOME": "", "EPHEMERID_GRACE_S": ""})

    assert settings.home == Path(".ephemerid").resolve()
    assert settings.grace_s == 10.0


def test_overrides_by_field_name_win_over_the_environment_and_none_is_no_override(
    tmp_path: Path,
) -> None:
    env = {**HOME, "EPHEMERID_GRACE_S": "3", "EPHEMERID_LOCAL_SLOTS": "2"}

    settings = Settings.from_env(env, home=tmp_path, grace_s=0.5, local_slots=None)

    assert settings.home == tmp_path.resolve()
    assert settings.store_url == f"sqlite://{tmp_path.resolve() / 'jobs.db'}"
    assert (settings.grace_s, settings.local_slots) == (0.5, 2)


def test_a_copy_with_changes_keeps_the_rest(tmp_path: Path) -> None:
    settings = Settings.from_env({}, home=tmp_path)

    changed = settings.model_copy(update={"local_slots": 1})

    assert (changed.local_slots, changed.home, settings.local_slots) == (1, settings.home, None)


# -- bad values ---------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("setting", "value", "says"),
    [
        ("EPHEMERID_GRACE_S", "-5", "must be seconds, 0 or more"),
        ("EPHEMERID_HEARTBEAT_TIMEOUT_S", "nan", "must be seconds, 0 or more"),
        ("EPHEMERID_HEARTBEAT_TIMEOUT_S", "inf", "must be seconds, 0 or more"),
        ("EPHEMERID_HEARTBEAT_S", "0", "must be seconds, more than 0"),
        ("EPHEMERID_PROVISION_TIMEOUT_S", "ten minutes", "is not a number: write seconds"),
        ("EPHEMERID_LOCAL_SLOTS", "two", "is not a number: write a whole number of slots"),
        ("EPHEMERID_LOCAL_SLOTS", "1.5", "is not a number: write a whole number of slots"),
        ("EPHEMERID_LOCAL_SLOTS", "0", "must be a whole number of slots, 1 or more"),
        ("EPHEMERID_EVICTION_RETRIES", "-1", "must be a whole number, 0 or more"),
        ("EPHEMERID_LOG_LIMIT_BYTES", "0", "must be a whole number of bytes, 1 or more"),
        ("EPHEMERID_AML_LOW_PRIORITY", "maybe", "is not true or false"),
        ("EPHEMERID_CAPACITY_BACKOFF_S", "-inf", "must be seconds, 0 or more"),
        ("EPHEMERID_CHECKPOINT_UPLOAD_S", "-1", "must be seconds, 0 (off) or 1 to 86400"),
        ("EPHEMERID_CHECKPOINT_UPLOAD_S", "100000", "must be seconds, 0 (off) or 1 to 86400"),
        ("EPHEMERID_CHECKPOINT_UPLOAD_S", "0.5", "must be 0 (only when the run ends) or from 1"),
        ("EPHEMERID_RUNNER_RESTARTS", "11", "must be a whole number from 0 to 10"),
    ],
)
def test_a_bad_setting_is_refused_at_start_naming_the_setting_its_value_and_what_to_write(
    setting: str, value: str, says: str
) -> None:
    error = refusal({**CLOUD, setting: value})

    assert error.exit_code == 2
    assert f"{setting}='{value}' {says}" in str(error)
    assert "pydantic" not in str(error) and "validation error" not in str(error)


def test_several_bad_settings_are_listed_in_one_error() -> None:
    env = {**HOME, "EPHEMERID_GRACE_S": "-5", "EPHEMERID_LOCAL_SLOTS": "0"}

    message = str(refusal(env))

    assert message.startswith("2 bad settings: ")
    assert "EPHEMERID_GRACE_S='-5'" in message and "EPHEMERID_LOCAL_SLOTS='0'" in message


def test_a_bad_override_is_named_by_its_setting(tmp_path: Path) -> None:
    with pytest.raises(BadInput, match=r"EPHEMERID_GRACE_S='-1\.0' must be seconds, 0 or more"):
        Settings.from_env({}, home=tmp_path, grace_s=-1.0)


@given(
    setting=st.sampled_from(SECONDS),
    value=st.one_of(
        st.floats(max_value=0, exclude_max=True, allow_nan=False).map(repr),
        st.sampled_from(["nan", "NaN", "inf", "-inf", "Infinity", "-Infinity", "+inf"]),
    ),
)
def test_any_negative_or_non_finite_seconds_value_is_refused_naming_the_setting(
    setting: str, value: str
) -> None:
    error = refusal({**CLOUD, setting: value})

    assert f"{setting}='{value}' must be seconds" in str(error)


@given(setting=st.sampled_from(SECONDS), value=st.floats(min_value=0.001, max_value=1e9))
def test_any_finite_positive_seconds_value_is_taken_as_written(setting: str, value: float) -> None:
    settings = Settings.from_env({**CLOUD, setting: repr(value)})

    read = [settings, settings.azure_vm, settings.azure_ml]
    found = [
        getattr(model, name)
        for model in read
        for name, field in type(model).model_fields.items()
        if field.alias == setting
    ]
    assert found and all(math.isclose(v, value) for v in found)


@pytest.mark.parametrize(
    ("written", "meant"),
    [("true", True), ("TRUE", True), (" yes ", True), ("1", True), ("false", False), ("0", False)],
)
def test_low_priority_is_a_boolean(written: str, meant: bool) -> None:
    settings = Settings.from_env({**CLOUD, "EPHEMERID_AML_LOW_PRIORITY": written})

    assert settings.azure_ml is not None and settings.azure_ml.low_priority is meant


def test_eph_with_a_bad_setting_exits_2_naming_it_and_no_traceback(tmp_path: Path) -> None:
    env = {**os.environ, "EPHEMERID_HOME": str(tmp_path), "EPHEMERID_GRACE_S": "-5"}
    env["COLUMNS"] = "300"

    done = subprocess.run(
        [str(EPH), "list"], capture_output=True, text=True, env=env, timeout=60, cwd=tmp_path
    )

    stderr = " ".join(done.stderr.split())
    assert done.returncode == 2, (done.stdout, stderr)
    assert "EPHEMERID_GRACE_S='-5' must be seconds, 0 or more" in stderr
    assert "Traceback" not in stderr


# -- the cloud backends -------------------------------------------------------------------------


def test_the_subscription_alone_configures_no_backend() -> None:
    settings = Settings.from_env({**HOME, "EPHEMERID_AZURE_SUBSCRIPTION_ID": "sub"})

    assert (settings.azure_vm, settings.azure_ml) == (None, None)


def test_both_backends_read_their_settings_and_the_blob_endpoint_the_account_implies() -> None:
    settings = Settings.from_env({**CLOUD, "EPHEMERID_STORAGE__accountName": "ephstore"})

    assert settings.azure_vm is not None and settings.azure_ml is not None
    assert settings.azure_vm.regions == ("eastus", "westus2:2")
    assert settings.azure_vm.blob_service_uri == "https://ephstore.blob.core.windows.net"
    assert settings.azure_ml.blob_service_uri == "https://ephstore.blob.core.windows.net"
    assert (settings.azure_ml.datastore, settings.azure_ml.idle_s) == ("ephemerid_runs", 120.0)


def test_a_half_configured_backend_is_refused_naming_what_is_missing() -> None:
    env = {k: v for k, v in CLOUD.items() if k != "EPHEMERID_VM_IDENTITY_ID"}

    message = str(refusal(env))

    assert "the azure-vm backend is half configured: set EPHEMERID_VM_IDENTITY_ID" in message


# -- what used to be read from os.environ elsewhere -------------------------------------------


def test_the_jobs_queue_name_is_a_setting() -> None:
    assert Settings.from_env(HOME).jobs_queue == "jobs"
    assert Settings.from_env({**HOME, "EPHEMERID_JOBS_QUEUE": "jobs-eu"}).jobs_queue == "jobs-eu"


def test_the_function_app_takes_its_jobs_queue_from_settings(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from ephemerid.functions import handlers_from_settings

    (tmp_path / "ephemerid.yaml").write_text("rules: []\n")
    monkeypatch.setenv("EPHEMERID_HOME", str(tmp_path / "home"))
    monkeypatch.setenv("EPHEMERID_RULES", str(tmp_path / "ephemerid.yaml"))
    monkeypatch.setenv("EPHEMERID_JOBS_QUEUE", "jobs-eu")
    handlers_from_settings.cache_clear()
    try:
        handlers = handlers_from_settings()
        with cleaned_up(handlers.service):
            assert handlers.jobs_queue == "jobs-eu"
    finally:
        handlers_from_settings.cache_clear()


def test_the_storage_connection_is_read_into_settings_in_either_form() -> None:
    by_string = Settings.from_env({**HOME, "EPHEMERID_STORAGE": SECRET})
    by_identity = Settings.from_env(
        {**HOME, "EPHEMERID_STORAGE__accountName": "acct", "EPHEMERID_STORAGE__clientId": "c1"}
    )

    assert by_string.storage.as_env() == {"EPHEMERID_STORAGE": SECRET}
    assert storage_connection(by_string.storage.as_env()).connection_string == SECRET
    identity = storage_connection(by_identity.storage.as_env())
    assert identity.uri("table") == "https://acct.table.core.windows.net"
    assert identity.client_id == "c1"


def test_the_connection_string_is_never_shown_in_the_settings_repr() -> None:
    settings = Settings.from_env({**HOME, "EPHEMERID_STORAGE": SECRET})

    for shown in (repr(settings), str(settings), settings.model_dump_json()):
        assert "c2VjcmV0LWtleQ" not in shown and "AccountKey" not in shown


def test_the_store_and_bucket_use_the_connection_in_settings_not_the_process_environment(
    tmp_path: Path, azurite_connection: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    azure = {**HOME, "EPHEMERID_STORE": "table://settingsjobs", "EPHEMERID_ARTIFACTS": "az://"}
    monkeypatch.setenv("EPHEMERID_STORAGE", azurite_connection)

    with pytest.raises(BadInput, match="storage connection 'EPHEMERID_STORAGE' is not set"):
        build_service(Settings.from_env(azure, home=tmp_path))
    monkeypatch.delenv("EPHEMERID_STORAGE")
    settings = Settings.from_env({**azure, "EPHEMERID_STORAGE": azurite_connection}, home=tmp_path)
    with cleaned_up(build_service(settings)) as service:
        assert isinstance(service.store, TableJobStore)
        assert isinstance(service.artifacts, BlobArtifactStore)
        assert service.store.list() == []
