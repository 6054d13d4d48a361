"""``catalog-agent demo``: a two-step pipeline through the real CLI against a local S3 server.

Step ``prepare`` puts its outputs; step ``train`` gets them into its own data folder. Nothing
here needs an AWS account or a cluster: SeaweedFS runs on loopback for the demo's duration.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import tempfile
import textwrap
from pathlib import Path

from catalog_agent import devserver

BUCKET = "demo-catalog"
RUN_ID = "demo-run-1"
NEXT_STEPS = """
next, in the repository:
  add the agent to a Job      README.md "A complete Job"; charts/catalog-agent/examples/job
  check your catalog          catalog-agent config --check --config config.yaml --run-id RUN
                              (credentials, identity, list, write, read: docs/credentials.md)
  every key, flag, variable   docs/configuration.md"""


def _cli(args: list[str], env: dict[str, str]) -> int:
    print(f"\n$ catalog-agent {' '.join(args)}", flush=True)
    return subprocess.run([sys.executable, "-m", "catalog_agent", *args], env=env).returncode


def run_demo(*, keep: bool = False) -> int:
    work = Path(tempfile.mkdtemp(prefix="catalog-agent-demo-"))
    print("starting a local S3 server (SeaweedFS) ...", flush=True)
    server = devserver.start(work / "s3", keep=keep)
    try:
        server.create_bucket(BUCKET)
        config = work / "config.yaml"
        config.write_text(textwrap.dedent(f"""\
            catalog:
              type: s3
              config:
                s3_bucket: {BUCKET}
                prefix: pipelines
                region: us-east-1
                endpoint_url: {server.endpoint}
                addressing_style: path
                compute_data_folder: {work / 'prepare-data'}
            dag:
              steps:
                prepare:
                  catalog:
                    put: ["raw/**", "summary.txt"]
                train:
                  catalog:
                    compute_data_folder: {work / 'train-data'}
                    get: ["raw/*.csv", "summary.txt"]
            """))
        produced = work / "prepare-data"
        (produced / "raw").mkdir(parents=True)
        for day in range(1, 4):
            rows = "\n".join(f"2026-11-0{day},{i},{i * day}" for i in range(100))
            (produced / "raw" / f"day-{day}.csv").write_text("date,id,value\n" + rows + "\n")
        (produced / "summary.txt").write_text("3 days of readings\n")

        env = {**os.environ, **server.env, "CATALOG_AGENT_CONFIG": str(config),
               "CATALOG_AGENT_RUN_ID": RUN_ID, "CATALOG_AGENT_LOG_FORMAT": "console",
               "CATALOG_AGENT_TERMINATION_LOG": str(work / "termination-log")}
        env.pop("CATALOG_AGENT_STEP", None)
        steps = [["put", "--step", "prepare"], ["get", "--step", "train"],
                 ["ls"], ["get", "--step", "train"]]
        for args in steps:
            code = _cli(args, env)
            if code != 0:
                print(f"demo: 'catalog-agent {' '.join(args)}' exited {code}", file=sys.stderr)
                return code
        manifest = server.client().get_object(
            Bucket=BUCKET, Key=f"pipelines/{RUN_ID}/.catalog-agent/manifests/prepare.json")
        print(f"\nmanifest s3://{BUCKET}/pipelines/{RUN_ID}/.catalog-agent/manifests/prepare.json:")
        print(manifest["Body"].read().decode())
        fetched = sorted(p.relative_to(work / "train-data").as_posix()
                         for p in (work / "train-data").rglob("*") if p.is_file())
        print(f"step 'train' received: {', '.join(fetched)}")
        print("(the second get skipped every file: they were already present and verified)")
        print(NEXT_STEPS)
        return 0
    finally:
        server.stop()
        if keep:
            print(f"kept {work}")
        else:
            shutil.rmtree(work, ignore_errors=True)
