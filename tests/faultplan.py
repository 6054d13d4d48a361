"""Which fault a request gets: request kinds, fault rules and a seeded choice (no I/O here).

The fault proxy (tests/faultproxy.py) asks :meth:`FaultPlan.choose` once per request, with the
request's method, target and headers, before it reads the request body. The choice depends only
on the seed, the rule, the request's identity (method, path, query without the upload id, Range)
and how many times that identity was seen before: the first attempt at part 3 gets the same
fault in every run, whatever order the parallel parts arrive in.
"""

from __future__ import annotations

import random
import threading
from collections import Counter
from dataclasses import dataclass, field
from urllib.parse import parse_qsl, urlsplit

# Request kinds, from what S3 request a method, target and headers make.
KINDS = ("part_upload", "complete", "create", "abort", "ranged_get", "get", "head", "put",
         "copy", "list", "list_uploads", "delete", "other")

# Faults: answered by the proxy itself (slowdown, internal, error_200), the connection reset
# before any answer (reset), the response body cut mid-stream then reset (reset_body), the
# request body cut mid-upload then reset (reset_request), the request forwarded but its answer
# lost to a reset (lost_answer), or the answer held back (delay).
FAULTS = ("slowdown", "internal", "error_200", "reset", "reset_body", "reset_request",
          "lost_answer", "delay")


def classify(method: str, target: str, headers: dict[str, str]) -> str:
    """The kind of an S3 request (path-style addressing; ``headers`` keys lowercase)."""
    parts = urlsplit(target)
    query = dict(parse_qsl(parts.query, keep_blank_values=True))
    bucket_level = len([s for s in parts.path.split("/") if s]) <= 1
    method = method.upper()
    if method == "PUT":
        if "x-amz-copy-source" in headers:
            return "copy"
        if "partNumber" in query and "uploadId" in query:
            return "part_upload"
        return "put"
    if method == "POST":
        if "uploadId" in query:
            return "complete"
        if "uploads" in query:
            return "create"
        return "other"
    if method == "GET":
        if "uploads" in query:
            return "list_uploads"
        if bucket_level or "list-type" in query:
            return "list"
        return "ranged_get" if "range" in headers else "get"
    if method == "HEAD":
        return "head"
    if method == "DELETE":
        return "abort" if "uploadId" in query else "delete"
    return "other"


def identity(method: str, target: str, headers: dict[str, str]) -> str:
    """What stays the same when a request is retried: not the upload id, date or signature.

    ``PUT /bucket/key [('partNumber', '2')] `` or ``GET /bucket/key [] bytes=0-8388607``.
    """
    parts = urlsplit(target)
    query = sorted((k, v) for k, v in parse_qsl(parts.query, keep_blank_values=True)
                   if k != "uploadId" and not k.lower().startswith("x-amz-"))
    return f"{method.upper()} {parts.path} {query} {headers.get('range', '')}"


@dataclass(frozen=True)
class Rule:
    """``fault`` for a share ``rate`` of the requests of ``kinds`` (at most ``limit`` times).

    ``cut_after``: body bytes passed on before a reset_body / reset_request cut (default half
    the body). A delay lasts a seeded ``min_delay`` to ``max_delay`` seconds. ``match``: only
    requests whose :func:`identity` contains it, e.g. ``"('partNumber', '2')"`` for part 2,
    ``"bytes=0-"`` for the first ranged part, ``"/weights"`` for a key; ``exclude``: not those
    whose identity contains it.
    """

    fault: str
    kinds: tuple[str, ...] = ("any",)
    rate: float = 1.0
    limit: int | None = None
    cut_after: int | None = None
    min_delay: float = 0.01
    max_delay: float = 0.3
    match: str = ""
    exclude: str = ""

    def __post_init__(self) -> None:
        if self.fault not in FAULTS:
            raise ValueError(f"unknown fault {self.fault!r}; one of {FAULTS}")
        kinds = (self.kinds,) if isinstance(self.kinds, str) else tuple(self.kinds)
        unknown = [k for k in kinds if k not in KINDS and k != "any"]
        if unknown:
            raise ValueError(f"unknown request kinds {unknown}; of {KINDS} or 'any'")
        object.__setattr__(self, "kinds", kinds)

    def applies(self, kind: str, ident: str) -> bool:
        return (("any" in self.kinds or kind in self.kinds) and self.match in ident
                and not (self.exclude and self.exclude in ident))


@dataclass
class Rates:
    """Share of all requests that get each fault (the first proxy's interface; still used)."""

    slowdown: float = 0.0
    internal: float = 0.0
    reset: float = 0.0
    reset_body: float = 0.0  # only responses with a body of 2 bytes or more
    delay: float = 0.0
    max_delay: float = 0.3

    def rules(self) -> list[Rule]:
        """Rules giving each fault its share: each rule sees what the ones before it left."""
        rules, left = [], 1.0
        for name in ("slowdown", "internal", "reset", "reset_body", "delay"):
            share = getattr(self, name)
            if share > 0:
                rules.append(Rule(name, rate=min(1.0, share / left), max_delay=self.max_delay))
                left -= share
        return rules


@dataclass
class Choice:
    """The fault chosen for one request (``fault`` None: forwarded untouched)."""

    kind: str
    fault: str | None = None
    rule: Rule | None = None
    delay: float = 0.0
    rule_index: int = -1


@dataclass
class FaultPlan:
    """Chooses faults and counts them: per kind seen, per fault and per (kind, fault) applied."""

    rules: list[Rule]
    seed: int = 0
    seen: Counter[str] = field(default_factory=Counter)
    injected: Counter[str] = field(default_factory=Counter)
    hits: Counter[tuple[str, str]] = field(default_factory=Counter)

    def __post_init__(self) -> None:
        self._lock = threading.Lock()
        self._occurrences: Counter[str] = Counter()
        self._used: Counter[int] = Counter()

    @property
    def requests(self) -> int:
        return sum(self.seen.values())

    def choose(self, method: str, target: str, headers: dict[str, str]) -> Choice:
        kind = classify(method, target, headers)
        ident = identity(method, target, headers)
        with self._lock:
            self.seen[kind] += 1
            occurrence = self._occurrences[ident]
            self._occurrences[ident] += 1
            for index, rule in enumerate(self.rules):
                if not rule.applies(kind, ident):
                    continue
                if rule.limit is not None and self._used[index] >= rule.limit:
                    continue
                roll = random.Random(f"{self.seed}|{index}|{ident}|{occurrence}")
                if roll.random() < rule.rate:
                    self._used[index] += 1
                    delay = (roll.uniform(rule.min_delay, rule.max_delay)
                             if rule.fault == "delay" else 0.0)
                    return Choice(kind, rule.fault, rule, delay, index)
        return Choice(kind)

    def applied(self, choice: Choice) -> None:
        """Count a fault that really happened (a cut needs a body to cut)."""
        assert choice.fault is not None
        with self._lock:
            self.injected[choice.fault] += 1
            self.hits[(choice.kind, choice.fault)] += 1

    def not_applied(self, choice: Choice) -> None:
        """Give back the rule's use: the request had nothing its fault could act on."""
        with self._lock:
            self._used[choice.rule_index] -= 1

    def count(self, kind: str | None = None, fault: str | None = None) -> int:
        """Faults applied, of one kind and/or one fault (None: all)."""
        with self._lock:
            return sum(n for (k, f), n in self.hits.items()
                       if (kind is None or k == kind) and (fault is None or f == fault))
