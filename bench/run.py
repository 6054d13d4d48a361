"""Run the benchmark: every tool, every data set, both directions, alternating, on one server.

Times are wall-clock from process start to exit; peak memory is the child's own ru_maxrss
(os.wait4 in bench/launch.py), so a tool that forks helpers would be under-counted (none of
these does). Every
time is reported beside the ratio to s5cmd measured in the same run, because the machine is
shared and absolute numbers from different runs do not compare.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import signal
import statistics
import subprocess
import sys
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

from bench import datasets, report
from bench.tools import NAMES, Target, Tools, missing, versions

RESULTS = Path(__file__).parent / "results"
LAUNCHER = Path(__file__).parent / "launch.py"


@dataclass
class Sample:
    seconds: float
    rss_kib: int


@dataclass
class Row:
    work: str  # "put", "get" or "get-one"
    dataset: str
    label: str
    samples: dict[str, list[Sample]] = field(default_factory=dict)

    def median(self, tool: str) -> float:
        return statistics.median(s.seconds for s in self.samples[tool])

    def peak(self, tool: str) -> int:
        return max(s.rss_kib for s in self.samples[tool])


class Failed(Exception):
    pass


def timed(command: list[str], env: dict[str, str], log: Path, timeout: float) -> Sample:
    """Run ``command`` through bench/launch.py; its wall time and peak RSS, or Failed."""
    report = log.with_suffix(".json")
    report.unlink(missing_ok=True)
    launcher = [sys.executable, "-S", str(LAUNCHER), str(report), *command]
    with open(log, "wb") as out:
        process = subprocess.Popen(launcher, env=env, stdout=out, stderr=subprocess.STDOUT,
                                   stdin=subprocess.DEVNULL, start_new_session=True)
        try:
            process.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            os.killpg(process.pid, signal.SIGKILL)
            process.wait()
            raise Failed(f"{' '.join(command)} took more than {timeout:.0f} s") from None
    measured = json.loads(report.read_text()) if report.exists() else {"code": -1}
    if measured["code"] != 0:
        tail = log.read_text(errors="replace")[-1500:]
        raise Failed(f"{' '.join(command)} exited {measured['code']}:\n{tail}")
    return Sample(round(measured["seconds"], 4), measured["rss_kib"])


def rotate(items: list[str], by: int) -> list[str]:
    by %= len(items)
    return items[by:] + items[:by]


class Bench:
    def __init__(self, args: argparse.Namespace) -> None:
        from catalog_agent import devserver

        self.args = args
        self.root = Path(args.data)
        self.data = self.root / "data"
        self.work = self.root / "work"
        shutil.rmtree(self.work, ignore_errors=True)
        self.work.mkdir(parents=True)
        self.sets = [d for d in (datasets.QUICK if args.quick else datasets.FULL)
                     if d.name in args.sets]
        self.tools_order = [t for t in NAMES if t in args.tools]
        self.counter = 0
        print(f"data sets in {self.data}", flush=True)
        for dataset in [*self.sets, datasets.ONE]:
            datasets.ensure(self.data, dataset)
        self.server = devserver.start(self.root / "server")
        self.client = self.server.client()
        self.tools = Tools(Target(self.server.endpoint, self.server.access_key,
                                  self.server.secret_key, self.work))

    def close(self) -> None:
        self.server.stop()
        shutil.rmtree(self.work, ignore_errors=True)

    def _fresh(self, kind: str) -> str:
        self.counter += 1
        return f"{kind}-{self.counter:04d}"

    def run_tool(self, tool: str, command: list[str], bucket: str) -> Sample:
        os.sync()  # one tool's dirty pages must not be written back on the next one's time
        return timed(command, self.tools.env(tool, bucket), self.work / "last.log",
                     self.args.timeout)

    def seed(self) -> None:
        """The get side's objects, put once by the agent itself (so manifests and hashes exist)."""
        self.client.create_bucket(Bucket="seed")
        for dataset in [*self.sets, datasets.ONE]:
            command = self.tools.put("catalog-agent", self.data / dataset.name, "seed",
                                     f"seed-{dataset.name}", dataset.name)
            self.run_tool("catalog-agent", command, "seed")
            print(f"seeded {dataset.name}", flush=True)

    def delete_bucket(self, bucket: str) -> None:
        paginator = self.client.get_paginator("list_objects_v2")
        for page in paginator.paginate(Bucket=bucket):
            keys = [{"Key": o["Key"]} for o in page.get("Contents", [])]
            if keys:
                self.client.delete_objects(Bucket=bucket, Delete={"Objects": keys})
        self.client.delete_bucket(Bucket=bucket)

    def stored(self, bucket: str, prefix: str) -> tuple[int, int]:
        count = total = 0
        paginator = self.client.get_paginator("list_objects_v2")
        for page in paginator.paginate(Bucket=bucket, Prefix=prefix):
            for obj in page.get("Contents", []):
                count += 1
                total += int(obj["Size"])
        return count, total

    def put_once(self, tool: str, dataset: datasets.DataSet) -> Sample:
        bucket = self._fresh("put")
        run = "r1"
        self.client.create_bucket(Bucket=bucket)
        try:
            command = self.tools.put(tool, self.data / dataset.name, bucket, run, dataset.name)
            sample = self.run_tool(tool, command, bucket)
            got = self.stored(bucket, f"bench/{run}/{dataset.name}/")
            if got != (dataset.count, dataset.total):
                raise Failed(f"{tool} put {dataset.name}: stored {got}, expected "
                             f"{(dataset.count, dataset.total)}")
            return sample
        finally:
            self.delete_bucket(bucket)

    def get_once(self, tool: str, dataset: datasets.DataSet, one: str | None = None) -> Sample:
        dest = self.work / self._fresh("get")
        dest.mkdir()
        try:
            command = self.tools.get(tool, "seed", f"seed-{dataset.name}", dataset.name, dest,
                                     one=one)
            sample = self.run_tool(tool, command, "seed")
            got = datasets.measure(dest)
            if got != (dataset.count, dataset.total):
                raise Failed(f"{tool} get {dataset.name}: wrote {got}, expected "
                             f"{(dataset.count, dataset.total)}")
            return sample
        finally:
            shutil.rmtree(dest, ignore_errors=True)

    def measure(self) -> list[Row]:
        rows: list[Row] = []
        for dataset in self.sets:
            for work in ("put", "get"):
                row = Row(work, dataset.name, f"{work} {dataset.label}")
                rows.append(row)
                for rep in range(self.args.runs):
                    for tool in rotate(self.tools_order, rep):
                        once = self.put_once if work == "put" else self.get_once
                        sample = once(tool, dataset)
                        row.samples.setdefault(tool, []).append(sample)
                        print(f"  {row.label:<24} {tool:<14} {sample.seconds:8.3f} s "
                              f"{sample.rss_kib / 1024:7.1f} MiB", flush=True)
        one = datasets.ONE
        row = Row("get-one", one.name, f"get 1 × {datasets._human(one.size)}, start to exit")
        rows.append(row)
        name = one.relative_paths()[0]
        for rep in range(max(self.args.runs, 5)):
            for tool in rotate(self.tools_order, rep):
                sample = self.get_once(tool, one, one=name)
                row.samples.setdefault(tool, []).append(sample)
                print(f"  {row.label:<24} {tool:<14} {sample.seconds:8.3f} s "
                      f"{sample.rss_kib / 1024:7.1f} MiB", flush=True)
        return rows


def machine() -> dict[str, str | int]:
    try:
        model = next(line.split(":", 1)[1].strip() for line in
                     Path("/proc/cpuinfo").read_text().splitlines() if line.startswith("model name"))
    except (OSError, StopIteration):
        model = platform.processor()
    return {"cpus": os.cpu_count() or 0, "cpu": model, "kernel": platform.release(),
            "python": platform.python_version()}


def parse(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="scripts/bench", description=__doc__.split("\n")[0])
    parser.add_argument("--quick", action="store_true",
                        help="smaller sets (400 × 64 KiB, 40 × 4 MiB, 1 × 256 MiB) for iterating")
    parser.add_argument("--runs", type=int, default=3, help="runs per tool and row (median)")
    parser.add_argument("--sets", default="small,medium,large",
                        help="comma-separated: small, medium, large")
    parser.add_argument("--tools", default=",".join(NAMES),
                        help="comma-separated subset of: " + ", ".join(NAMES))
    parser.add_argument("--data", default=os.environ.get("BENCH_DATA", "/tmp/catalog-agent-bench"),
                        help="scratch folder: data sets (kept and reused), server, downloads")
    parser.add_argument("--timeout", type=float, default=900, help="seconds per tool run")
    parser.add_argument("--json", default="", help="results file (default bench/results/<time>.json)")
    args = parser.parse_args(argv)
    args.sets = [s for s in args.sets.split(",") if s]
    args.tools = [t for t in args.tools.split(",") if t]
    unknown = [t for t in args.tools if t not in NAMES]
    if unknown or args.runs < 1:
        parser.error(f"unknown tools {unknown}" if unknown else "--runs must be at least 1")
    if "s5cmd" not in args.tools:
        parser.error("s5cmd is the reference of every ratio: keep it in --tools")
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse(argv)
    gone = [t for t in missing() if t in args.tools]
    if gone:
        print(f"missing tools: {', '.join(gone)} (scripts/bench installs them)", file=sys.stderr)
        return 2
    started = time.time()
    bench = Bench(args)
    try:
        bench.seed()
        rows = bench.measure()
    except Failed as exc:
        print(f"benchmark failed: {exc}", file=sys.stderr)
        return 1
    finally:
        bench.close()
    results = {
        "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime(started)),
        "seconds": round(time.time() - started, 1),
        "quick": args.quick,
        "runs": args.runs,
        "machine": machine(),
        "versions": versions(),
        "rows": [{"work": r.work, "dataset": r.dataset, "label": r.label,
                  "samples": {t: [asdict(s) for s in ss] for t, ss in r.samples.items()}}
                 for r in rows],
    }
    print()
    print(report.table(results))
    print()
    print(report.targets(results))
    path = Path(args.json) if args.json else RESULTS / time.strftime(
        "%Y%m%d-%H%M%S.json", time.gmtime(started))
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(results, indent=1))
    print(f"\nresults: {path}")
    return 0
