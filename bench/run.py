"""Run the benchmark: every tool, every data set, each work, alternating, on one server.

Times are wall-clock from process start to exit; CPU seconds (user and system) and peak memory
are the child's own rusage (os.wait4 in bench/launch.py), so a tool that forks helpers would be
under-counted in memory (none of these does). Every time is reported beside the ratio to s5cmd
measured in the same run, and, with --baseline, the agent's beside the same measures of an
earlier commit of the agent, because the machine is shared and absolute numbers from different
runs do not compare.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import signal
import subprocess
import sys
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Callable

from bench import datasets, report
from bench.baseline import Baseline, BaselineError, prepare
from bench.seed import BUCKET, Seeder, run_id
from bench.tools import (AGENT, FLOORS, NAMES, OPENSSL, REFERENCE, SHA256SUM, Target, Tools,
                         is_agent, missing, openssl_binary, takes_part)

RESULTS = Path(__file__).parent / "results"
LAUNCHER = Path(__file__).parent / "launch.py"
REPOSITORY = Path(__file__).parent.parent
# The works of each --sets name, in the order they run.
WORKS = {"small": ("put", "get"), "medium": ("put", "get"), "large": ("put", "get"),
         "many": ("put", "get"), "one": ("get-one",), "million": ("ls", "get-present")}
ONE_RUNS = 5  # the start-to-exit row is short and noisy: at least this many runs


@dataclass
class Sample:
    seconds: float
    rss_kib: int
    user: float
    sys: float


@dataclass
class Row:
    work: str  # "put", "get", "get-one", "ls" or "get-present"
    dataset: str
    label: str
    load_start: list[float] = field(default_factory=list)
    samples: dict[str, list[Sample]] = field(default_factory=dict)


class Failed(Exception):
    pass


def timed(command: list[str], env: dict[str, str], log: Path, timeout: float, cwd: Path,
          stdout: Path | None = None) -> Sample:
    """Run ``command`` through bench/launch.py; its wall time, CPU and peak RSS, or Failed.

    Output goes to ``log`` (stdout to ``stdout`` instead when given, for listings to count).
    """
    result = log.with_suffix(".json")
    result.unlink(missing_ok=True)
    launcher = [sys.executable, "-S", str(LAUNCHER), str(result), *command]
    with open(log, "wb") as err, open(stdout, "wb") if stdout else err as out:
        process = subprocess.Popen(launcher, env=env, stdout=out, stderr=err, cwd=cwd,
                                   stdin=subprocess.DEVNULL, start_new_session=True)
        try:
            process.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            os.killpg(process.pid, signal.SIGKILL)
            process.wait()
            raise Failed(f"{' '.join(command)} took more than {timeout:.0f} s") from None
    measured = json.loads(result.read_text()) if result.exists() else {"code": -1}
    if measured["code"] != 0:
        tail = log.read_text(errors="replace")[-1500:]
        raise Failed(f"{' '.join(command)} exited {measured['code']}:\n{tail}")
    return Sample(round(measured["seconds"], 4), measured["rss_kib"],
                  round(measured["user"], 3), round(measured["sys"], 3))


def rotate(items: list[str], by: int) -> list[str]:
    by %= len(items)
    return items[by:] + items[:by]


def count_lines(path: Path) -> int:
    lines = 0
    with open(path, "rb") as source:
        while block := source.read(1 << 20):
            lines += block.count(b"\n")
    return lines


def unhashed_lines(path: Path) -> int:
    """Lines of the agent's ``ls`` (size, hash, step, path) whose hash column is "-"."""
    with open(path, "rb") as source:
        return sum(1 for line in source if line.split(None, 2)[1:2] == [b"-"])


def server_tls(folder: Path) -> Any:
    """A certificate for the server from a CA made for this run (the tests' own PKI), as
    production S3 is https: every tool then pays for TLS as it would there."""
    from catalog_agent import devserver
    from tests.tls_support import TestPki

    pki = TestPki(folder)
    leaf = pki.leaf("seaweedfs")
    return devserver.Tls(leaf.cert, leaf.key, pki.ca)


def load() -> list[float]:
    return [round(x, 2) for x in os.getloadavg()]


class Bench:
    def __init__(self, args: argparse.Namespace) -> None:
        from catalog_agent import devserver

        self.args = args
        self.root = Path(args.data)
        self.data = self.root / "data"
        self.work = self.root / "work"
        shutil.rmtree(self.work, ignore_errors=True)
        self.work.mkdir(parents=True)
        table = datasets.QUICK if args.quick else datasets.FULL
        self.sets = {name: table[name].scaled(args.scale) for name in args.sets}
        self.baseline: Baseline | None = prepare(args.baseline, self.work) if args.baseline else None
        order = [t for t in NAMES if t in args.tools]
        if self.baseline is not None:
            order.insert(order.index(AGENT) + 1 if AGENT in order else 1, self.baseline.tool)
        self.tools_order = [*order, SHA256SUM, *([OPENSSL] if openssl_binary() else [])]
        # Byte-code compiled ahead for both agents, so that neither's first run pays for it.
        trees = [REPOSITORY, *([self.baseline.tree] if self.baseline else [])]
        for tree in trees:
            subprocess.run([sys.executable, "-m", "compileall", "-q", str(tree / "catalog_agent")],
                           check=True, stdout=subprocess.DEVNULL)
        self.counter = 0
        print(f"data sets in {self.data}", flush=True)
        for dataset in self.sets.values():
            datasets.ensure(self.data, dataset)
        if args.keep_server:
            folder, keep = Path(args.keep_server), True
        else:
            folder, keep = self.root / "server", False
            shutil.rmtree(folder, ignore_errors=True)
        started = time.monotonic()
        tls = server_tls(self.work / "pki") if args.tls else None
        self.server = devserver.start(folder, keep=keep, tls=tls)
        endpoint = self.server.https_endpoint if tls else self.server.endpoint
        print(f"SeaweedFS at {endpoint} ({folder}{', kept' if keep else ''}), "
              f"ready in {time.monotonic() - started:.0f} s", flush=True)
        self.client = self.server.client()
        for bucket in self.client.list_buckets().get("Buckets", []):
            if bucket["Name"].startswith("put-"):  # left by an interrupted run on a kept server
                self.delete_bucket(bucket["Name"])
        self.tools = Tools(Target(endpoint, self.server.access_key, self.server.secret_key,
                                  self.work, str(tls.ca_bundle) if tls else ""), self.baseline)
        self.seeder = Seeder(self.client, self.tools, self.data, self.run_tool)

    def close(self) -> None:
        self.server.stop()
        shutil.rmtree(self.work, ignore_errors=True)

    def _fresh(self, kind: str) -> str:
        self.counter += 1
        return f"{kind}-{self.counter:04d}"

    def run_tool(self, tool: str, command: list[str], bucket: str,
                 stdout: Path | None = None) -> Sample:
        os.sync()  # one tool's dirty pages must not be written back on the next one's time
        return timed(command, self.tools.env(tool, bucket), self.work / "last.log",
                     self.args.timeout, self.work, stdout)

    def seed(self) -> None:
        """The get side's objects (kept between runs with --keep-server)."""
        for name, dataset in self.sets.items():
            if set(WORKS[name]) & {"get", "get-one", "ls", "get-present"}:
                self.seeder.ensure(dataset)

    def delete_bucket(self, bucket: str) -> None:
        try:  # SeaweedFS drops a non-empty bucket (and its volumes) at once
            self.client.delete_bucket(Bucket=bucket)
            return
        except Exception:  # noqa: BLE001 - an S3 that refuses: empty it first
            pass
        paginator = self.client.get_paginator("list_objects_v2")
        for page in paginator.paginate(Bucket=bucket):
            keys = [{"Key": o["Key"]} for o in page.get("Contents", [])]
            if keys:
                self.client.delete_objects(Bucket=bucket, Delete={"Objects": keys, "Quiet": True})
        self.client.delete_bucket(Bucket=bucket)

    def stored(self, bucket: str, prefix: str) -> tuple[int, int]:
        count = total = 0
        paginator = self.client.get_paginator("list_objects_v2")
        for page in paginator.paginate(Bucket=bucket, Prefix=prefix):
            for obj in page.get("Contents", []):
                count += 1
                total += int(obj["Size"])
        return count, total

    def _expect(self, tool: str, what: str, got: Any, expected: Any) -> None:
        if got != expected:
            tail = (self.work / "last.log").read_text(errors="replace")[-1500:]
            raise Failed(f"{tool} {what}: got {got}, expected {expected}\n{tail}")

    # One run of one tool for each work ------------------------------------------------------

    def put_once(self, tool: str, dataset: datasets.DataSet) -> Sample:
        bucket = self._fresh("put")
        run = "r1"
        self.client.create_bucket(Bucket=bucket)
        # SeaweedFS gives a new bucket its volumes at the first write (about a second): pay
        # that before the clock starts, as a real S3 bucket would not charge it to any tool.
        self.client.put_object(Bucket=bucket, Key="warm-up", Body=b"warm")
        self.client.delete_object(Bucket=bucket, Key="warm-up")
        try:
            command = self.tools.put(tool, self.data / dataset.name, bucket, run, dataset.name)
            sample = self.run_tool(tool, command, bucket)
            self._expect(tool, f"put {dataset.name} (objects, bytes)",
                         self.stored(bucket, f"bench/{run}/{dataset.name}/"),
                         (dataset.count, dataset.total))
            return sample
        finally:
            self.delete_bucket(bucket)

    def get_once(self, tool: str, dataset: datasets.DataSet, one: str | None = None) -> Sample:
        if tool in FLOORS:
            return self.hash_once(tool, dataset)
        dest = self.work / self._fresh("get")
        dest.mkdir()
        try:
            command = self.tools.get(tool, BUCKET, run_id(dataset), dataset.name, dest, one=one)
            sample = self.run_tool(tool, command, BUCKET)
            expected = (1, dataset.size) if one else (dataset.count, dataset.total)
            self._expect(tool, f"get {dataset.name} (files, bytes)", datasets.measure(dest),
                         expected)
            return sample
        finally:
            shutil.rmtree(dest, ignore_errors=True)

    def get_one_once(self, tool: str, dataset: datasets.DataSet) -> Sample:
        return self.get_once(tool, dataset, one=next(dataset.relative_paths()))

    def hash_once(self, tool: str, dataset: datasets.DataSet) -> Sample:
        relative, digest = next(datasets.hashes(self.data, dataset))
        out = self.work / "hash.out"
        command = self.tools.hash_file(tool, self.data / dataset.name / relative)
        sample = self.run_tool(tool, command, BUCKET, stdout=out)
        self._expect(tool, "digest", out.read_text().split(" ", 1)[0], digest)
        return sample

    def ls_once(self, tool: str, dataset: datasets.DataSet) -> Sample:
        out = self.work / "ls.out"
        try:
            sample = self.run_tool(tool, self.tools.ls(tool, BUCKET, run_id(dataset),
                                                       dataset.name), BUCKET, stdout=out)
            self._expect(tool, f"ls {dataset.name} (lines)", count_lines(out), dataset.count)
            if is_agent(tool):  # every key's hash comes from a manifest: none printed as "-"
                self._expect(tool, f"ls {dataset.name} (lines without a hash)",
                             unhashed_lines(out), 0)
            return sample
        finally:
            out.unlink(missing_ok=True)

    def present_once(self, tool: str, dataset: datasets.DataSet) -> Sample:
        command = self.tools.get_present(tool, BUCKET, run_id(dataset), dataset.name, self.data)
        message = self.work / "termination-log"
        message.unlink(missing_ok=True)
        sample = self.run_tool(tool, command, BUCKET)
        self._expect(tool, f"get {dataset.name} into a full folder (files, bytes)",
                     datasets.measure(self.data / dataset.name), (dataset.count, dataset.total))
        if is_agent(tool):  # it hashed every file and moved none
            summary = json.loads(message.read_text())
            self._expect(tool, f"get {dataset.name} into a full folder (moved, skipped)",
                         (summary.get("files"), summary.get("skipped")), (0, dataset.count))
        return sample

    # Rows -----------------------------------------------------------------------------------

    def _label(self, work: str, dataset: datasets.DataSet) -> str:
        folders = f" ({dataset.folders:,} folders)" if dataset.folders > 1 else ""
        if work == "get-one":
            return f"get 1 × {datasets.human(dataset.size)}, start to exit"
        if work == "ls":
            return f"ls {dataset.count:,} keys"
        if work == "get-present":
            return f"get {dataset.label}, all present"
        return f"{work} {dataset.label}{folders}"

    def measure(self) -> list[Row]:
        once: dict[str, Callable[[str, datasets.DataSet], Sample]] = {
            "put": self.put_once, "get": self.get_once, "get-one": self.get_one_once,
            "ls": self.ls_once, "get-present": self.present_once}
        rows: list[Row] = []
        for name, dataset in self.sets.items():
            for work in WORKS[name]:
                row = Row(work, name, self._label(work, dataset), load())
                rows.append(row)
                tools = [t for t in self.tools_order if takes_part(t, work, name)]
                runs = max(self.args.runs, ONE_RUNS) if work == "get-one" else self.args.runs
                for rep in range(runs):
                    for tool in rotate(tools, rep):
                        sample = once[work](tool, dataset)
                        row.samples.setdefault(tool, []).append(sample)
                        print(f"  {row.label:<36} {tool:<24} {sample.seconds:8.3f} s  CPU "
                              f"{sample.user:7.2f}+{sample.sys:<7.2f} {sample.rss_kib / 1024:7.1f} "
                              f"MiB", flush=True)
        return rows


def machine() -> dict[str, str | int]:
    try:
        model = next(line.split(":", 1)[1].strip() for line in
                     Path("/proc/cpuinfo").read_text().splitlines() if line.startswith("model name"))
    except (OSError, StopIteration):
        model = platform.processor()
    return {"cpus": os.cpu_count() or 0, "cpu": model, "kernel": platform.release(),
            "python": platform.python_version()}


def agent_commit() -> str:
    """The current code's commit, marked when the agent's files differ from it."""
    try:
        sha = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=REPOSITORY,
                             capture_output=True, text=True, check=True).stdout.strip()
        dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no", "--",
                                "catalog_agent", "pyproject.toml"], cwd=REPOSITORY,
                               capture_output=True, text=True, check=True).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return "unknown"
    return sha + (" with uncommitted changes" if dirty else "")


def parse(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="scripts/bench", description=__doc__.split("\n")[0])
    parser.add_argument("--quick", action="store_true",
                        help="smaller sets, for iterating (under ten minutes on a quiet machine)")
    parser.add_argument("--runs", type=int, default=3, help="runs per tool and row (median)")
    parser.add_argument("--sets", default=",".join(datasets.NAMES),
                        help="comma-separated rows to run: small, medium, large, many (put and "
                             "get), one (one-file get), million (ls and a get of present files)")
    parser.add_argument("--tools", default="",
                        help="comma-separated subset of: " + ", ".join(NAMES) + " (default: "
                             "all; with --quick all but aws-cli-v2, whose start-up of about 2 s "
                             "per run would take a sixth of the ten minutes)")
    parser.add_argument("--baseline", default="", metavar="REF",
                        help="also run the agent at this commit (tool catalog-agent@REF) and "
                             "compare the current agent with it row by row")
    parser.add_argument("--data", default=os.environ.get("BENCH_DATA", "/tmp/catalog-agent-bench"),
                        help="scratch folder: data sets (kept and reused), server, downloads")
    parser.add_argument("--keep-server", default="", metavar="DIR",
                        help="keep SeaweedFS's data in DIR after the run and reuse its seeded "
                             "objects next time (seeding a million keys takes many minutes)")
    parser.add_argument("--seed-only", action="store_true",
                        help="write the data sets and seed the kept server (--keep-server), then "
                             "stop: the seeding's load is over before a measured run starts")
    parser.add_argument("--scale", type=float, default=1.0,
                        help="multiply every set's file count (e.g. 0.01 to try the tooling)")
    parser.add_argument("--tls", action="store_true",
                        help="S3 over https, with a certificate of a CA made for the run that "
                             "every tool is told to trust (AWS_CA_BUNDLE, RCLONE_CA_CERT)")
    parser.add_argument("--timeout", type=float, default=1800, help="seconds per tool run")
    parser.add_argument("--json", default="", help="results file (default bench/results/<time>.json)")
    args = parser.parse_args(argv)
    args.sets = [s for s in args.sets.split(",") if s]
    args.tools = [t for t in args.tools.split(",") if t] or [
        t for t in NAMES if not (args.quick and t == "aws-cli-v2")]
    unknown_sets = [s for s in args.sets if s not in datasets.NAMES]
    unknown = [t for t in args.tools if t not in NAMES]
    if unknown or unknown_sets:
        parser.error(f"unknown tools {unknown}" if unknown else f"unknown sets {unknown_sets}")
    if args.runs < 1 or args.scale <= 0:
        parser.error("--runs must be at least 1 and --scale above 0")
    if args.seed_only and not args.keep_server:
        parser.error("--seed-only seeds a server that is kept: give --keep-server DIR")
    if REFERENCE not in args.tools:
        parser.error("s5cmd is the reference of every ratio: keep it in --tools")
    if args.baseline and AGENT not in args.tools:
        parser.error("--baseline compares with catalog-agent: keep it in --tools")
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse(argv)
    gone = [t for t in missing() if t in [*args.tools, SHA256SUM]]
    if gone:
        print(f"missing tools: {', '.join(gone)} (scripts/bench installs them)", file=sys.stderr)
        return 2
    started = time.time()
    load_start = load()
    print(f"load average at start: {' '.join(map(str, load_start))}", flush=True)
    try:
        bench = Bench(args)
    except BaselineError as exc:
        print(f"benchmark failed: {exc}", file=sys.stderr)
        return 2
    try:
        versions = bench.tools.versions()
        bench.seed()
        if args.seed_only:
            print(f"seeded in {time.time() - started:.0f} s: "
                  + ", ".join(f"{k} {v:.0f} s" for k, v in bench.seeder.seconds.items()))
            return 0
        measuring = time.time()
        rows = bench.measure()
    except Failed as exc:
        print(f"benchmark failed: {exc}", file=sys.stderr)
        return 1
    finally:
        bench.close()
    results: dict[str, Any] = {
        "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime(started)),
        "seconds": round(time.time() - started, 1),
        "measuring_seconds": round(time.time() - measuring, 1),
        "seeding_seconds": bench.seeder.seconds,
        "load": {"start": load_start, "end": load()},
        "quick": args.quick,
        "tls": args.tls,
        "scale": args.scale,
        "runs": args.runs,
        "machine": machine(),
        "versions": versions,
        "agent_commit": agent_commit(),
        "baseline": ({"tool": bench.baseline.tool, "ref": bench.baseline.ref,
                      "sha": bench.baseline.sha} if bench.baseline else None),
        "sets": {name: asdict(d) for name, d in bench.sets.items()},
        "rows": [{"work": r.work, "dataset": r.dataset, "label": r.label,
                  "load_start": r.load_start,
                  "samples": {t: [asdict(s) for s in ss] for t, ss in r.samples.items()}}
                 for r in rows],
    }
    print()
    print(report.render(results))
    path = Path(args.json) if args.json else RESULTS / time.strftime(
        "%Y%m%d-%H%M%S.json", time.gmtime(started))
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(results, indent=1))
    print(f"\nresults: {path} (whole run {results['seconds']:.0f} s, measuring "
          f"{results['measuring_seconds']:.0f} s)")
    return 0
