"""The get side's objects: put once into the bucket ``seed``, kept with a kept server.

Each set is stored under run ``seed-<name>``. Most sets are put by the current agent itself, so
their manifests and object metadata are the agent's own. The million-key run is too costly for
that (and today's agents hold a put's plan whole): its objects are uploaded by s5cmd (the
fastest honest writer found: real S3 PUTs through the gateway, ETag = MD5, as any client gets),
and its manifests are written by the benchmark from the hashes taken while the files were
generated, in the agent's own manifest format (``catalog_agent.manifest``), split into steps of
at most ``MANIFEST_FILES`` entries each (a 1,000,000-entry manifest is about 310 MB, above the
64 MiB a manifest may have for the agents at hand). A stamp object per set records which bytes
(the data set's token) the seed holds, so that a kept server is seeded again only when the
local set was rewritten.
"""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any, Callable

from bench import datasets
from bench.tools import AGENT, REFERENCE, RUN_PREFIX, Tools

BUCKET = "seed"
STAMPS = "bench-seed-stamps/"  # outside the agent's prefix: no run ever sees them
MANIFEST_FILES = 100_000
S5CMD_WORKERS = "64"


def run_id(dataset: datasets.DataSet) -> str:
    return f"seed-{dataset.name}"


class Seeder:
    def __init__(self, client: Any, tools: Tools, data: Path,
                 run_tool: Callable[[str, list[str], str], Any]) -> None:
        self.client = client
        self.tools = tools
        self.data = data
        self.run_tool = run_tool
        self.seconds: dict[str, float] = {}

    def _bucket(self) -> None:
        names = {b["Name"] for b in self.client.list_buckets().get("Buckets", [])}
        if BUCKET not in names:
            self.client.create_bucket(Bucket=BUCKET)

    def _stamp_key(self, dataset: datasets.DataSet) -> str:
        return f"{STAMPS}{dataset.name}.json"

    def _wanted(self, dataset: datasets.DataSet) -> dict[str, Any]:
        local = datasets.stamp(self.data, dataset)
        assert local is not None, f"data set {dataset.name} is not written"
        wanted: dict[str, Any] = {"local": local}
        if dataset.name == "million":
            wanted["manifest_files"] = MANIFEST_FILES
        return wanted

    def _seeded(self, dataset: datasets.DataSet) -> bool:
        try:
            body = self.client.get_object(Bucket=BUCKET, Key=self._stamp_key(dataset))["Body"]
            return json.loads(body.read()) == self._wanted(dataset)
        except Exception:  # noqa: BLE001 - absent or unreadable: seed again
            return False

    def _clear(self, prefix: str) -> None:
        paginator = self.client.get_paginator("list_objects_v2")
        for page in paginator.paginate(Bucket=BUCKET, Prefix=prefix):
            keys = [{"Key": o["Key"]} for o in page.get("Contents", [])]
            if keys:
                self.client.delete_objects(Bucket=BUCKET, Delete={"Objects": keys, "Quiet": True})

    def ensure(self, dataset: datasets.DataSet) -> None:
        """Seed ``dataset`` unless the bucket already holds exactly these bytes."""
        self._bucket()
        if self._seeded(dataset):
            print(f"seed of {dataset.name} kept from an earlier run", flush=True)
            return
        started = time.monotonic()
        self.client.delete_object(Bucket=BUCKET, Key=self._stamp_key(dataset))
        self._clear(f"{RUN_PREFIX}/{run_id(dataset)}/")
        if dataset.name == "million":
            self._bulk(dataset)
        else:
            command = self.tools.put(AGENT, self.data / dataset.name, BUCKET, run_id(dataset),
                                     dataset.name)
            self.run_tool(AGENT, command, BUCKET)
        self.client.put_object(Bucket=BUCKET, Key=self._stamp_key(dataset),
                               Body=json.dumps(self._wanted(dataset)).encode())
        self.seconds[dataset.name] = round(time.monotonic() - started, 1)
        print(f"seeded {dataset.name} ({dataset.label}) in {self.seconds[dataset.name]:.0f} s",
              flush=True)

    def _bulk(self, dataset: datasets.DataSet) -> None:
        from catalog_agent import manifest
        from catalog_agent.keys import manifest_key

        run = run_id(dataset)
        source = self.data / dataset.name
        command = self.tools.put(REFERENCE, source, BUCKET, run, dataset.name)
        command[1:1] = ["--numworkers", S5CMD_WORKERS]
        uploaded = time.monotonic()
        self.run_tool(REFERENCE, command, BUCKET)
        print(f"  s5cmd uploaded {dataset.count:,} objects in "
              f"{time.monotonic() - uploaded:.0f} s", flush=True)
        location = manifest.handler_location(f"s3://{BUCKET}", RUN_PREFIX)
        batch: list[manifest.Entry] = []
        part = 0

        def flush() -> None:
            nonlocal batch, part
            step = f"seed-{part:03d}"
            doc = manifest.document(batch, run_id=run, step=step, command="put")
            self.client.put_object(Bucket=BUCKET, Key=manifest_key(f"{RUN_PREFIX}/{run}/", step),
                                   Body=manifest.encode(doc))
            batch, part = [], part + 1

        for relative, digest in datasets.hashes(self.data, dataset):
            name = f"{dataset.name}/{relative}"
            batch.append(manifest.entry(name, digest, dataset.size, run_id=run,
                                        location=location, stage="put", executable=False))
            if len(batch) == MANIFEST_FILES:
                flush()
        if batch:
            flush()
