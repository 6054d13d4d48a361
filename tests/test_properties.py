"""Property tests: whatever configuration arrives, the loader answers ConfigError or a Config.

The file, the environment and the flags are all written by someone else (a ConfigMap, a
workflow template, an Argo parameter). Any other exception would be a traceback and exit 1
instead of one clear line and exit 2.
"""

from __future__ import annotations

import json
import string
import tempfile
from pathlib import Path
from typing import Any

import yaml
from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st

from catalog_agent.config import KEYS, Config, load, run_prefix
from catalog_agent.errors import ConfigError
from catalog_agent.keys import unsafe_reason

SETTINGS = settings(max_examples=300, deadline=None,
                    suppress_health_check=[HealthCheck.too_slow])

# Undecodable bytes in the environment reach Python as lone surrogates (\udc80-\udcff);
# st.text never draws those, so strings are joined from characters here.
_chars = st.one_of(st.characters(codec="utf-8"),
                   st.characters(min_codepoint=0xDC80, max_codepoint=0xDCFF,
                                 exclude_categories=()))


def texts(max_size: int) -> Any:
    return st.lists(_chars, max_size=max_size).map("".join)


_text = texts(40)
_scalars = st.one_of(st.none(), st.booleans(), st.integers(), st.floats(allow_nan=True),
                     _text, st.sampled_from(["s3", "file-system", "true", "no", "900", "-1",
                                             "auto", "AES256", "http://x", "~", ".."]))
_values = st.recursive(_scalars, lambda inner: st.one_of(
    st.lists(inner, max_size=4), st.dictionaries(st.one_of(_text, st.integers()), inner,
                                                 max_size=4)), max_leaves=12)
_key_names = st.one_of(st.sampled_from(sorted(KEYS)), _text)


@st.composite
def documents(draw: Any) -> Any:
    """Mostly magnus-shaped documents with hostile values, sometimes anything at all."""
    if draw(st.integers(0, 4)) == 0:
        return draw(_values)
    config = draw(st.dictionaries(_key_names, _values, max_size=6))
    step_entry = draw(st.dictionaries(st.sampled_from(["get", "put", "compute_data_folder",
                                                       "allow_missing", "typo"]), _values,
                                      max_size=3))
    doc: dict[Any, Any] = {"catalog": {"type": draw(_values), "config": config},
                           "dag": {"steps": {draw(st.sampled_from(["train", "x"])):
                                             {"catalog": step_entry}}}}
    if draw(st.booleans()):
        doc[draw(_text)] = draw(_values)
    return doc


def _environ() -> Any:
    names = st.sampled_from(sorted(spec.env for spec in KEYS.values())
                            + ["CATALOG_AGENT_TYPO", "CATALOG_AGENT_X_PORT_80_TCP"])
    return st.dictionaries(names, texts(30), max_size=5)


def _flags() -> Any:
    def flag_value(name: str) -> Any:
        if KEYS[name].kind == "bool":
            return st.one_of(st.none(), st.booleans())
        return st.one_of(st.none(), texts(30))

    return st.sampled_from(sorted(KEYS)).flatmap(
        lambda name: st.tuples(st.just(name), flag_value(name))).map(lambda kv: {kv[0]: kv[1]})


def _load(**kwargs: Any) -> Config | None:
    """The loaded config, or None after a clean ConfigError; anything else fails the test."""
    try:
        config = load(**kwargs)
    except ConfigError as exc:
        text = str(exc)
        assert text and "\n" not in text.strip(), f"not one line: {text!r}"
        assert exc.exit_code == 2
        return None
    for name in KEYS:  # an accepted value can go into a key, a log line and a message
        value = getattr(config, name)
        for text in value if isinstance(value, tuple) else [value]:
            if isinstance(text, str):
                text.encode("utf-8")
    return config


@SETTINGS
@given(doc=documents(), environ=_environ(), flags=_flags())
def test_any_yaml_environment_and_flags_give_config_or_config_error(doc: Any, environ: dict,
                                                                    flags: dict) -> None:
    with tempfile.TemporaryDirectory() as folder:
        path = Path(folder) / "config.yaml"
        try:
            path.write_text(yaml.safe_dump(doc, allow_unicode=True))
        except yaml.YAMLError:
            assume(False)
        config = _load(config_path=str(path), environ={"CATALOG_AGENT_S3_BUCKET": "b",
                                                       **environ}, flags=flags)
    if config is not None:
        assert config.type in {"s3", "file-system"}
        assert 1 <= config.max_attempts <= 20 and 1 <= config.concurrency <= 256


@SETTINGS
@given(raw=st.one_of(st.binary(max_size=300), st.text(max_size=300).map(str.encode),
                     st.sampled_from([b"a: &a [*a]", b"!!python/object:os.system {}",
                                      b"[" * 5000, b"{" * 5000, b"a: b: c", b"\xff\xfe",
                                      b"catalog: {config: {s3_bucket: [1, {2: 3}]}}",
                                      b"- 1\n- 2", b"key: !!binary AAAA", b"? [a]\n: b"])))
def test_any_bytes_as_the_config_file_give_config_or_config_error(raw: bytes) -> None:
    with tempfile.TemporaryDirectory() as folder:
        path = Path(folder) / "config.yaml"
        path.write_bytes(raw)
        _load(config_path=str(path), environ={"CATALOG_AGENT_S3_BUCKET": "b"}, flags={})


@SETTINGS
@given(run_id=texts(140),
       step=texts(140),
       prefix=st.text(alphabet=string.printable, max_size=30))
def test_run_id_and_step_name_are_refused_or_safe_in_keys(run_id: str, step: str,
                                                          prefix: str) -> None:
    """An accepted run id, step name and prefix always make keys that stay in their place."""
    config = _load(environ={"CATALOG_AGENT_S3_BUCKET": "b"},
                   flags={"run_id": run_id, "step": step, "prefix": prefix})
    if config is None:
        return
    where = run_prefix(config.prefix, config.run_id)
    assert unsafe_reason(where + "x") is None, where
    assert unsafe_reason(f"{where}.catalog-agent/manifests/{config.step}.json") is None
    assert where.count("/") == (config.prefix.count("/") + 2 if config.prefix else 1)


@SETTINGS
@given(env=_environ(), value=texts(50))
def test_environment_values_of_any_text_give_config_or_config_error(env: dict,
                                                                    value: str) -> None:
    names = sorted(spec.env for spec in KEYS.values())
    environ = {"CATALOG_AGENT_S3_BUCKET": "b", **env}
    for name in names[:: max(1, len(names) // 6)]:
        environ[name] = value
    _load(environ=environ, flags={})


def test_the_cli_turns_hostile_configuration_into_exit_2(offline_agent, tmp_path: Path) -> None:
    """The same through the real CLI, for a handful of hostile files: exit 2, one line."""
    cases = [b"[" * 100_000, b"catalog: {config: {max_attempts: 1e309}}", b"\x00\x01\x02",
             b"catalog:\n  config:\n    region: !!python/object/apply:os.system ['id']",
             yaml.safe_dump({"catalog": {"config": {"concurrency": [1] * 1000}}}).encode(),
             b"a: " + b"x" * (1024 * 1024 + 1)]
    for index, raw in enumerate(cases):
        path = tmp_path / f"c{index}.yaml"
        path.write_bytes(raw)
        ran = offline_agent("config", "--config", str(path))
        assert ran.code == 2, (raw[:60], ran.output[-2000:])
        assert "Traceback" not in ran.output
        lines = [json.loads(line) for line in ran.stderr.splitlines() if line.startswith("{")]
        assert [e["level"] for e in lines] == ["error"], ran.stderr


def test_the_cli_refuses_undecodable_bytes_in_the_environment(offline_agent,
                                                              tmp_path: Path) -> None:
    """A run id with bytes that are not UTF-8 (os.environ holds them as surrogates): exit 2."""
    for name in ("CATALOG_AGENT_RUN_ID", "CATALOG_AGENT_PREFIX", "CATALOG_AGENT_PUT"):
        ran = offline_agent("put", "--step", "s", env={name: "run-\udcff",
                                                       "CATALOG_AGENT_RUN_ID": "r"}
                            if name != "CATALOG_AGENT_RUN_ID" else {name: "run-\udcff"})
        assert ran.code == 2, ran.output[-2000:]
        assert "Traceback" not in ran.output and "UTF-8" in ran.stderr
        assert json.loads((tmp_path / "termination-log").read_text())["exit_code"] == 2
