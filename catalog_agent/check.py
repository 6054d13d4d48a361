"""``catalog-agent config --check``: prove the agent's identity and access without moving data.

Resolves credentials exactly as get and put do, asks STS who the agent is, then lists the run's
prefix and writes, reads back and deletes a small probe object under
``<prefix>/<run_id>/.catalog-agent/check/`` (a place no pattern ever matches). Each result is
printed; any failure exits 4 with one line and a hint for the common causes.
"""

from __future__ import annotations

import secrets
from dataclasses import dataclass, field
from typing import Any, Callable

from catalog_agent.config import Config, require_run
from catalog_agent.errors import AccessError, AgentError

CHECK_FOLDER = ".catalog-agent/check/"


@dataclass
class Step:
    """One check: what was tried, whether it worked, and what was learnt or went wrong."""

    name: str
    ok: bool | None  # None: not tried (an earlier check failed)
    detail: str = ""
    error: AgentError | None = field(default=None, repr=False)

    @property
    def status(self) -> str:
        return "ok" if self.ok else ("skipped" if self.ok is None else "FAILED")


def run_check(config: Config) -> tuple[list[Step], dict[str, Any]]:
    """Run every check; return the steps and a summary. Raises only for configuration errors."""
    from catalog_agent.aws import s3_client, translate
    from catalog_agent.credentials import resolve, sts_client, sts_error

    require_run(config)
    steps: list[Step] = []
    summary: dict[str, Any] = {"command": "config-check"}
    try:
        resolved = resolve(config)
    except AgentError as exc:
        steps.append(Step("credentials", False, str(exc), exc))
        return steps, summary
    summary["method"] = resolved.method
    steps.append(Step("credentials", True, resolved.describe()))

    try:
        identity = sts_client(config, resolved).get_caller_identity()
        arn = identity.get("Arn", "")
        summary["identity"] = arn
        steps.append(Step("identity", True, f"{arn} (account {identity.get('Account', '?')})"))
    except Exception as exc:  # noqa: BLE001 - every failure becomes a reported step
        error = sts_error(exc, "GetCallerIdentity", config)
        steps.append(Step("identity", False, str(error), error))

    if config.type != "s3":
        steps.append(Step("catalog", None, f"type {config.type}: no S3 access to check"))
        return steps, summary
    client = s3_client(config, pool_size=2, session=resolved.session)
    bucket, prefix = config.s3_bucket, config.run_prefix
    probe = f"{prefix}{CHECK_FOLDER}{secrets.token_hex(8)}"
    body = b"catalog-agent config --check\n"
    where = f"s3://{bucket}/"

    def attempt(name: str, detail: str, call: Callable[[], Any], what: str, *,
                fatal: bool = True) -> bool:
        try:
            call()
        except Exception as exc:  # noqa: BLE001
            error = translate(exc, what, bucket=bucket)
            if not isinstance(error, AccessError):
                error = AccessError(str(error))
            if fatal:
                steps.append(Step(name, False, str(error), error))
            else:
                steps.append(Step(name, False, f"{error} (get and put never delete: not "
                                                f"needed, but the probe object stays)"))
            return False
        steps.append(Step(name, True, detail))
        return True

    listed = attempt("list", where + prefix,
                     lambda: client.list_objects_v2(Bucket=bucket, Prefix=prefix, MaxKeys=1),
                     f"list {where}{prefix}")
    # The probe is written as put writes: a bucket policy requiring encryption, or a KMS key
    # the role may not use, must fail here as it would fail put.
    encryption: dict[str, str] = {}
    if config.server_side_encryption:
        encryption["ServerSideEncryption"] = config.server_side_encryption
    if config.sse_kms_key_id:
        encryption["SSEKMSKeyId"] = config.sse_kms_key_id
    written = attempt("write", where + probe,
                      lambda: client.put_object(Bucket=bucket, Key=probe, Body=body,
                                                **encryption),
                      f"write {where}{probe}")
    if written:
        def read() -> None:
            got = client.get_object(Bucket=bucket, Key=probe)["Body"].read()
            if got != body:
                raise AccessError(f"read {where}{probe}: got other bytes than were written")

        attempt("read", where + probe, read, f"read {where}{probe}")
        attempt("delete", where + probe, lambda: client.delete_object(Bucket=bucket, Key=probe),
                f"delete {where}{probe}", fatal=False)
    else:
        steps.append(Step("read", None, "nothing written to read back"))
    summary["list"], summary["write"] = listed, written
    return steps, summary


def first_failure(steps: list[Step]) -> AgentError | None:
    for step in steps:
        if step.ok is False and step.error is not None:
            return step.error
    return None


def report(config: Config, *, as_json: bool, echo: Callable[[str], None]) -> dict[str, Any]:
    """Run the checks, print one line per check (or one JSON object), raise the first failure."""
    import json

    steps, summary = run_check(config)
    if as_json:
        echo(json.dumps({"checks": [{"check": s.name, "status": s.status, "detail": s.detail}
                                    for s in steps], **{k: v for k, v in summary.items()
                                                        if k != "command"}}, indent=1))
    else:
        for step in steps:
            echo(f"{step.name:<12} {step.status:<8} {step.detail}")
    failure = first_failure(steps)
    if failure is not None:
        raise failure
    return summary
