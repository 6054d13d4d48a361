"""Known secret values never appear in logs, errors, termination messages or ``config`` output.

"Known" means the values of the credential variables (AWS_SECRET_ACCESS_KEY, the session token,
and the variables use_credentials names). The other reliability tests check the server's secret
key in their failures too; these put a secret where a careless configuration would.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

SECRET = "wJalrXUtnFEMI-K7MDENG-bPxRfiCYEXAMPLEKEY"
TOKEN = "FwoGZXIvYXdzEJr-session-token-EXAMPLE-0123456789"


def everything(ran, tmp_path: Path) -> str:  # noqa: ANN001
    log = tmp_path / "termination-log"
    return ran.stdout + ran.stderr + (log.read_text() if log.exists() else "")


@pytest.mark.parametrize("variable", ["CATALOG_AGENT_MAX_ATTEMPTS", "CATALOG_AGENT_TYPE",
                                      "CATALOG_AGENT_USE_CREDENTIALS",
                                      "CATALOG_AGENT_ENDPOINT_URL", "CATALOG_AGENT_RUN_ID"])
def test_a_secret_pasted_into_a_wrong_setting_is_not_repeated_by_the_error(
        offline_agent, tmp_path: Path, variable: str) -> None:
    value = SECRET + "/x" if variable == "CATALOG_AGENT_RUN_ID" else SECRET
    ran = offline_agent("config", env={"AWS_SECRET_ACCESS_KEY": SECRET,
                                       "CATALOG_AGENT_S3_BUCKET": "b", variable: value})
    assert ran.code == 2, ran.output
    text = everything(ran, tmp_path)
    assert SECRET not in text
    assert variable in text  # the line still says where the problem is
    assert json.loads((tmp_path / "termination-log").read_text())["exit_code"] == 2


def test_config_output_never_shows_a_secret_or_a_url_password(offline_agent,
                                                              tmp_path: Path) -> None:
    env = {"AWS_SECRET_ACCESS_KEY": SECRET, "AWS_SESSION_TOKEN": TOKEN,
           "CATALOG_AGENT_S3_BUCKET": "b", "CATALOG_AGENT_REGION": SECRET,
           "CATALOG_AGENT_PREFIX": TOKEN,
           "CATALOG_AGENT_ENDPOINT_URL": "https://user:hunter2-password@s3.example.com"}
    for args in (["config"], ["config", "--json"]):
        ran = offline_agent(*args, env=env)
        assert ran.code == 0, ran.output
        text = everything(ran, tmp_path)
        assert SECRET not in text and TOKEN not in text and "hunter2" not in text
        assert "s3.example.com" in text


def test_credentials_from_named_variables_never_leak_when_the_transfer_fails(
        offline_agent, tmp_path: Path) -> None:
    """use_credentials with custom variable names; the endpoint is down: exit 5, no secret."""
    data = tmp_path / "data"
    data.mkdir()
    (data / "a.txt").write_text("a")
    env = {"CATALOG_AGENT_USE_CREDENTIALS": "true",
           "CATALOG_AGENT_AWS_ACCESS_KEY_NAME": "MY_KEY", "MY_KEY": "AKIAEXAMPLEEXAMPLE01",
           "CATALOG_AGENT_AWS_SECRET_ACCESS_KEY_NAME": "MY_SECRET", "MY_SECRET": SECRET,
           "CATALOG_AGENT_AWS_SESSION_KEY_NAME": "MY_TOKEN", "MY_TOKEN": TOKEN,
           "CATALOG_AGENT_S3_BUCKET": "b", "CATALOG_AGENT_REGION": "us-east-1",
           "CATALOG_AGENT_ENDPOINT_URL": "http://127.0.0.1:9", "CATALOG_AGENT_MAX_ATTEMPTS": "1",
           "CATALOG_AGENT_LOG_LEVEL": "debug"}
    ran = offline_agent("put", "**", "--run-id", "r", "--step", "s", "--compute-data-folder",
                        str(data), env=env)
    assert ran.code == 5, ran.output
    text = everything(ran, tmp_path)
    assert SECRET not in text and TOKEN not in text


def test_a_secret_in_a_path_is_scrubbed_from_the_error(offline_agent, tmp_path: Path) -> None:
    folder = tmp_path / SECRET
    folder.mkdir()
    ran = offline_agent("put", "nothing-here", "--run-id", "r", "--step", "s",
                        "--compute-data-folder", str(folder),
                        env={"AWS_SECRET_ACCESS_KEY": SECRET, "CATALOG_AGENT_S3_BUCKET": "b",
                             "CATALOG_AGENT_ENDPOINT_URL": "http://127.0.0.1:9"})
    assert ran.code == 3, ran.output
    text = everything(ran, tmp_path)
    assert SECRET not in text and "matched nothing" in text
