"""Configuration: the seed's keys and defaults, precedence, and errors that name their cause."""

import json
from pathlib import Path

import pytest

from catalog_agent.config import DEFAULT_CONFIG_PATH, KEYS, load
from catalog_agent.errors import ConfigError

SEED_DEFAULTS = {
    "aws_profile": "", "use_credentials": False, "region": "eu-west-1",
    "aws_access_key_name": "AWS_ACCESS_KEY_ID",
    "aws_secret_access_key_name": "AWS_SECRET_ACCESS_KEY",
    "aws_session_key_name": "AWS_SESSION_TOKEN", "role_arn": "",
    "session_duration_in_seconds": 900, "compute_data_folder": "data/", "prefix": "",
}


def write(tmp_path: Path, text: str) -> str:
    path = tmp_path / "config.yaml"
    path.write_text(text)
    return str(path)


BASE = "catalog:\n  type: s3\n  config:\n    s3_bucket: b\n"


def test_every_seed_key_exists_with_the_seed_default(tmp_path: Path) -> None:
    config = load(config_path=write(tmp_path, BASE), environ={})
    for key, default in SEED_DEFAULTS.items():
        assert getattr(config, key) == default, key
    assert config.aws_credentials_file.endswith("/.aws/credentials")
    assert config.s3_bucket == "b"


def test_precedence_flag_over_env_over_step_over_catalog_over_default(tmp_path: Path) -> None:
    path = write(tmp_path, BASE + "    compute_data_folder: /cat\n    region: r-file\n"
                 "dag:\n  steps:\n    s1:\n      catalog:\n        compute_data_folder: /step\n"
                 "    s2:\n      catalog:\n        compute_data_folder: /other\n")
    env = {"CATALOG_AGENT_STEP": "s1"}
    assert load(config_path=path, environ=env).compute_data_folder == "/step"
    assert load(config_path=path, environ={"CATALOG_AGENT_STEP": "s2"}).compute_data_folder == "/other"
    assert load(config_path=path, environ={}).compute_data_folder == "/cat"
    env2 = {**env, "CATALOG_AGENT_COMPUTE_DATA_FOLDER": "/env"}
    config = load(config_path=path, environ=env2)
    assert config.compute_data_folder == "/env"
    assert config.sources["compute_data_folder"] == "variable CATALOG_AGENT_COMPUTE_DATA_FOLDER"
    config = load(config_path=path, environ=env2, flags={"compute_data_folder": "/flag"})
    assert config.compute_data_folder == "/flag"
    assert config.sources["compute_data_folder"] == "flag --compute-data-folder"
    assert config.region == "r-file" and "catalog.config" in config.sources["region"]
    assert config.sources["max_attempts"] == "default"


def test_step_entry_patterns_and_environment_lists(tmp_path: Path) -> None:
    path = write(tmp_path, BASE + "dag:\n  steps:\n    s1:\n      catalog:\n"
                 "        get: [a, 'b/**']\n        put: [c]\n        allow_missing: true\n")
    config = load(config_path=path, environ={"CATALOG_AGENT_STEP": "s1"})
    assert (config.get, config.put, config.allow_missing) == (("a", "b/**"), ("c",), True)
    config = load(config_path=path, environ={"CATALOG_AGENT_STEP": "s1",
                                             "CATALOG_AGENT_GET": "x/*.csv, y"})
    assert config.get == ("x/*.csv", "y")


def test_every_key_has_a_variable_and_is_settable_by_it() -> None:
    env = {"CATALOG_AGENT_S3_BUCKET": "b", "CATALOG_AGENT_USE_CREDENTIALS": "true",
           "CATALOG_AGENT_SESSION_DURATION_IN_SECONDS": "3600",
           "CATALOG_AGENT_VERIFY_TLS": "no", "CATALOG_AGENT_SERVER_SIDE_ENCRYPTION": "aws:kms",
           "CATALOG_AGENT_SSE_KMS_KEY_ID": "k", "CATALOG_AGENT_ADDRESSING_STYLE": "virtual",
           "CATALOG_AGENT_PREFIX": "/a/b/"}
    config = load(environ=env, config_path=None)
    assert config.use_credentials is True and config.verify_tls is False
    assert config.session_duration_in_seconds == 3600 and config.prefix == "a/b"
    assert config.addressing_style == "virtual" and config.sse_kms_key_id == "k"
    assert {spec.env for spec in KEYS.values()} >= {"CATALOG_AGENT_S3_BUCKET",
                                                    "CATALOG_AGENT_ENDPOINT_URL"}


@pytest.mark.parametrize("text, message", [
    (BASE + "    prefx: p\n", r"unknown key 'prefx' in catalog.config .*did you mean 'prefix'"),
    ("catalg:\n  config: {}\n", r"unknown key 'catalg'.*did you mean 'catalog'"),
    (BASE + "dag:\n  steps:\n    s:\n      catalog:\n        gett: [a]\n",
     r"unknown key 'gett' in dag.steps.s.catalog.*did you mean 'get'"),
    (BASE + "    use_credentials: 'yes'\n",
     r"use_credentials: expected a boolean .*string 'yes' \(from file .*catalog.config\)"),
    (BASE + "    session_duration_in_seconds: 1.5\n",
     r"session_duration_in_seconds: expected an integer, got number 1.5 \(from file"),
    (BASE + "    prefix: 2024\n", r"prefix: expected a string, got integer 2024"),
    (BASE + "    addressing_style: pathh\n", r"addressing_style: 'pathh' is not one of.*'path'"),
    ("catalog:\n  type: s3\n  config:\n    prefix: p\n", r"s3_bucket is required"),
    ("catalog: [1\n", r"config file .* at line"),
    ("- a\n- b\n", r"expected a mapping at the top"),
    (BASE + "    prefix: a/../b\n", r"prefix .* '\.\.' segment"),
    (BASE + "    sse_kms_key_id: k\n", r"sse_kms_key_id is set .* not 'aws:kms'"),
])
def test_file_errors_name_the_key_and_the_source(tmp_path: Path, text: str, message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        load(config_path=write(tmp_path, text), environ={})


@pytest.mark.parametrize("env, message", [
    ({"CATALOG_AGENT_MAX_ATTEMPTS": "many"},
     r"max_attempts: expected an integer, got string 'many' \(from variable CATALOG_AGENT_MAX_ATTEMPTS\)"),
    ({"CATALOG_AGENT_S3_BUKET": "b"}, r"unknown environment variable CATALOG_AGENT_S3_BUKET; did you mean 'CATALOG_AGENT_S3_BUCKET'"),
    ({"CATALOG_AGENT_RUN_ID": "a/b"}, r"run id 'a/b' must not contain '/'"),
    ({"CATALOG_AGENT_RUN_ID": ".."}, r"run id '\.\.' must not contain"),
    ({"CATALOG_AGENT_RUN_ID": ""}, r"run id is empty \(from variable CATALOG_AGENT_RUN_ID\)"),
    ({"CATALOG_AGENT_STEP": "x\\y"}, r"step .* must not contain"),
    ({"CATALOG_AGENT_CONCURRENCY": "0"}, r"concurrency: 0 is out of range 1..256"),
])
def test_environment_errors_name_the_variable(env: dict[str, str], message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        load(config_path=None, environ={"CATALOG_AGENT_S3_BUCKET": "b", **env})


def test_kubernetes_service_link_variables_are_not_typos() -> None:
    env = {"CATALOG_AGENT_S3_BUCKET": "b", "CATALOG_AGENT_METRICS_PORT": "tcp://1.2.3.4:80",
           "CATALOG_AGENT_METRICS_SERVICE_HOST": "1.2.3.4"}
    assert load(config_path=None, environ=env).s3_bucket == "b"


def test_missing_explicit_config_file_is_an_error_but_missing_default_is_not(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="cannot read config file"):
        load(config_path=str(tmp_path / "absent.yaml"), environ={})
    assert not Path(DEFAULT_CONFIG_PATH).exists()
    assert load(environ={"CATALOG_AGENT_S3_BUCKET": "b"}).s3_bucket == "b"


def test_file_system_catalog_needs_no_bucket(tmp_path: Path) -> None:
    config = load(config_path=write(tmp_path, "catalog:\n  type: file-system\n  config:\n"
                                    "    catalog_location: /mnt/cat\n"), environ={})
    assert (config.type, config.catalog_location) == ("file-system", "/mnt/cat")


# --- through the CLI: exit code 2, one line, no traceback ---

def test_config_error_exits_2_with_one_line(offline_agent, tmp_path: Path) -> None:
    path = write(tmp_path, BASE + "    regoin: x\n")
    ran = offline_agent("get", "a", "--run-id", "r", "--config", path)
    assert ran.code == 2
    lines = [line for line in ran.stderr.splitlines() if line.strip()]
    assert len(lines) == 1, ran.stderr
    event = json.loads(lines[0])
    assert "did you mean 'region'" in event["event"] and event["level"] == "error"
    assert "Traceback" not in ran.output


def test_flag_type_error_names_the_flag(offline_agent) -> None:
    ran = offline_agent("get", "a", "--run-id", "r", "--s3-bucket", "b", "--max-attempts", "x")
    assert ran.code == 2 and "from flag --max-attempts" in ran.stderr


def test_put_needs_a_step_name(offline_agent) -> None:
    ran = offline_agent("put", "a", "--run-id", "r", "--s3-bucket", "b")
    assert ran.code == 2 and "step name is required" in ran.stderr


def test_get_needs_a_run_id(offline_agent) -> None:
    ran = offline_agent("get", "a", "--s3-bucket", "b")
    assert ran.code == 2 and "run id is required" in ran.stderr


def test_config_command_prints_values_and_sources_without_secrets(offline_agent,
                                                                  tmp_path: Path) -> None:
    path = write(tmp_path, BASE + "    region: eu-central-1\n    use_credentials: true\n"
                 "    endpoint_url: https://user:hunter2-password@s3.example.com\n")
    secret = "wJalrXUtnFEMI/K7MDENG/bPxRfiCYEXAMPLEKEY"
    ran = offline_agent("config", "--json", "--config", path, "--prefix", "p",
                        env={"AWS_SECRET_ACCESS_KEY": secret, "AWS_ACCESS_KEY_ID": "AKIAEXAMPLE",
                             "CATALOG_AGENT_RUN_ID": "run-7"})
    assert ran.code == 0, ran.output
    shown = json.loads(ran.stdout)
    assert shown["region"] == {"value": "eu-central-1", "source": f"file {path}, catalog.config"}
    assert shown["prefix"] == {"value": "p", "source": "flag --prefix"}
    assert shown["run_id"]["source"] == "variable CATALOG_AGENT_RUN_ID"
    assert shown["aws_secret_access_key_name"]["value"] == "AWS_SECRET_ACCESS_KEY"
    assert shown["endpoint_url"]["value"] == "https://***@s3.example.com"
    assert secret not in ran.output and "hunter2" not in ran.output


def test_help_documents_exit_codes(offline_agent) -> None:
    for command in ([], ["get"], ["put"]):
        ran = offline_agent(*command, "--help")
        assert ran.code == 0
        for code in ("0", "2", "3", "4", "5", "6"):
            assert f"\n      {code}  " in ran.stdout or f"\n    {code}  " in ran.stdout, (command, code)
        assert "CATALOG_AGENT_S3_BUCKET" in ran.stdout or command == []


def test_region_comes_from_aws_region_then_aws_default_region_before_its_default(
        offline_agent, tmp_path: Path) -> None:
    """EKS injects AWS_REGION (and AWS_DEFAULT_REGION) for IRSA and Pod Identity; the agent
    ignored them, sending STS calls of a us-east-2 cluster to eu-west-1. Precedence: flag >
    CATALOG_AGENT_REGION > catalog config > AWS_REGION > AWS_DEFAULT_REGION > eu-west-1."""
    aws = {"AWS_REGION": "us-east-2", "AWS_DEFAULT_REGION": "ap-south-1"}
    path = write(tmp_path, BASE + "    region: eu-north-1\n")
    (tmp_path / "base").mkdir()
    base = write(tmp_path / "base", BASE)
    cases = [
        ({}, "", {}, "eu-west-1", "default"),
        ({"AWS_REGION": ""}, "", {}, "eu-west-1", "default"),  # empty: unset
        ({"AWS_DEFAULT_REGION": "ap-south-1"}, "", {}, "ap-south-1",
         "variable AWS_DEFAULT_REGION"),
        (aws, "", {}, "us-east-2", "variable AWS_REGION"),
        (aws, path, {}, "eu-north-1", f"file {path}, catalog.config"),
        ({**aws, "CATALOG_AGENT_REGION": "sa-east-1"}, path, {}, "sa-east-1",
         "variable CATALOG_AGENT_REGION"),
        ({**aws, "CATALOG_AGENT_REGION": "sa-east-1"}, path, {"region": "me-south-1"},
         "me-south-1", "flag --region"),
    ]
    for environ, config_path, flags, region, source in cases:
        config = load(config_path=config_path or base,
                      environ=environ, flags=flags)
        assert (config.region, config.sources["region"]) == (region, source), environ
    ran = offline_agent("config", "--json", "--s3-bucket", "b", env={"AWS_REGION": "us-east-2"})
    assert ran.code == 0, ran.output
    assert json.loads(ran.stdout)["region"] == {"value": "us-east-2",
                                                "source": "variable AWS_REGION"}
