"""The get side's objects: put once into the bucket ``seed``, kept with a kept server.

Each set is stored under run ``seed-<name>``. Most sets are put by the current agent itself, so
their manifests and object metadata are the agent's own. The million-key run is too costly for
that (and today's agents hold a put's plan whole): its objects are uploaded by s5cmd (the
fastest honest writer found: real S3 PUTs through the gateway, ETag = MD5, as any client gets),
and its manifests are written by the benchmark from the hashes taken while the files were
generated, in the agent's own manifest format (``catalog_agent.manifest``): one manifest of a
million entries (about 310 MB), which the agent reads line by line. A stamp object per set
records which bytes
(the data set's token) the seed holds, so that a kept server is seeded again only when the
local set was rewritten.
"""

from __future__ import annotations

import json
import tempfile
import time
from pathlib import Path
from typing import Any, Callable, Iterator

from bench import datasets
from bench.tools import AGENT, REFERENCE, RUN_PREFIX, Tools

BUCKET = "seed"
STAMPS = "bench-seed-stamps/"  # outside the agent's prefix: no run ever sees them
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
            wanted["manifest"] = "one, line by line"
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

        def entries() -> Iterator[manifest.Entry]:
            for relative, digest in datasets.hashes(self.data, dataset):
                yield manifest.entry(f"{dataset.name}/{relative}", digest, dataset.size,
                                     run_id=run, location=location, stage="put",
                                     executable=False)

        # One manifest for the whole set, as a put of it writes: streamed to a file, then
        # uploaded in parts (1,000,000 entries are about 310 MB).
        step = "seed"
        with tempfile.NamedTemporaryFile(dir=self.tools.t.work, suffix=".json") as spool:
            for piece in manifest.encode(manifest.header(run_id=run, step=step,
                                                         command="put"), entries()):
                spool.write(piece)
            spool.flush()
            self.client.upload_file(spool.name, BUCKET,
                                    manifest_key(f"{RUN_PREFIX}/{run}/", step))
