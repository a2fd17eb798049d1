"""The SageMaker platform's variables for a serving container: how each is read, checked, and
ranked against an explicit option and the default (the server and the CLI are tested through
HTTP in test_server.py and test_container.py)."""

from __future__ import annotations

import pytest

from object2vec.errors import UsageError
from object2vec.serving import settings
from object2vec.serving.settings import Platform, serve_port, serve_settings, transform_limits

JSON, JSONLINES = "application/json", "application/jsonlines"


def test_an_empty_environment_means_the_defaults():
    platform = Platform.read({})
    assert platform == Platform()
    assert serve_port(None, platform) == 8080
    served = serve_settings("model", platform=platform)
    assert (served.workers, served.max_payload_mb, served.default_accept, served.preferred_mode) == (
        1,
        6.0,
        "",
        "",
    )
    assert transform_limits(platform=platform) == (6.0, 1)


def test_the_platform_variables_are_read():
    platform = Platform.read(
        {
            "SAGEMAKER_BIND_TO_PORT": "9090",
            "SAGEMAKER_MAX_PAYLOAD_IN_MB": "20",
            "SAGEMAKER_DEFAULT_INVOCATIONS_ACCEPT": "application/jsonlines",
            "SAGEMAKER_BATCH": "true",
            "SAGEMAKER_MAX_CONCURRENT_TRANSFORMS": "3",
            "INFERENCE_PREFERRED_MODE": "embedding",
        }
    )
    assert platform == Platform(9090, 20.0, JSONLINES, True, 3, "embedding")
    assert serve_port(None, platform) == 9090
    served = serve_settings("model", platform=platform)
    assert (served.max_payload_mb, served.default_accept, served.preferred_mode) == (
        20.0,
        JSONLINES,
        "embedding",
    )
    assert transform_limits(platform=platform) == (20.0, 3)


def test_an_explicit_option_beats_the_variable():
    platform = Platform.read(
        {
            "SAGEMAKER_BIND_TO_PORT": "9090",
            "SAGEMAKER_MAX_PAYLOAD_IN_MB": "20",
            "INFERENCE_PREFERRED_MODE": "embedding",
        }
    )
    assert serve_port(7000, platform) == 7000
    served = serve_settings(
        "model", workers=4, max_payload_mb=2, preferred_mode="classification", platform=platform
    )
    assert (served.workers, served.max_payload_mb, served.preferred_mode) == (4, 2, "classification")
    assert transform_limits(1.5, 2, platform) == (1.5, 2)


@pytest.mark.parametrize(
    "environ, workers",
    [
        ({"SAGEMAKER_BATCH": "true", "SAGEMAKER_MAX_CONCURRENT_TRANSFORMS": "2"}, 2),
        ({"SAGEMAKER_BATCH": "True", "SAGEMAKER_MAX_CONCURRENT_TRANSFORMS": "64"}, 4),  # one per core
        ({"SAGEMAKER_BATCH": "true"}, 1),
        ({"SAGEMAKER_MAX_CONCURRENT_TRANSFORMS": "2"}, 1),  # not a batch transform: an endpoint
        ({"SAGEMAKER_BATCH": "false", "SAGEMAKER_MAX_CONCURRENT_TRANSFORMS": "2"}, 1),
    ],
)
def test_batch_transform_gets_a_worker_per_concurrent_transform_up_to_the_cores(
    environ, workers, monkeypatch
):
    monkeypatch.setattr(settings, "cpu_cores", lambda: 4)
    platform = Platform.read(environ)
    assert platform.workers() == workers
    assert serve_settings("model", platform=platform).workers == workers


def test_wildcards_leave_the_answer_type_to_the_request():
    assert Platform.read({"SAGEMAKER_DEFAULT_INVOCATIONS_ACCEPT": "*/*"}).default_accept == ""
    assert Platform.read({"SAGEMAKER_DEFAULT_INVOCATIONS_ACCEPT": JSON}).default_accept == JSON


def test_no_payload_limit_is_sagemakers_largest():
    assert Platform.read({"SAGEMAKER_MAX_PAYLOAD_IN_MB": "0"}).max_payload_mb == 100


@pytest.mark.parametrize(
    "name, value",
    [
        ("SAGEMAKER_BIND_TO_PORT", "http"),
        ("SAGEMAKER_BIND_TO_PORT", "0"),
        ("SAGEMAKER_BIND_TO_PORT", "70000"),
        ("SAGEMAKER_MAX_PAYLOAD_IN_MB", "-1"),
        ("SAGEMAKER_MAX_PAYLOAD_IN_MB", "nan"),
        ("SAGEMAKER_MAX_PAYLOAD_IN_MB", "101"),
        ("SAGEMAKER_MAX_CONCURRENT_TRANSFORMS", "two"),
        ("SAGEMAKER_DEFAULT_INVOCATIONS_ACCEPT", "text/csv"),
    ],
)
def test_a_malformed_variable_is_a_usage_error_naming_it(name, value):
    with pytest.raises(UsageError) as err:
        Platform.read({name: value})
    assert name in str(err.value) and repr(value) in str(err.value)
