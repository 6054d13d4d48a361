"""Planning is pure: facts in, plan or error out, no network (milliseconds)."""

import pytest

from catalog_agent import plan
from catalog_agent.errors import IntegrityError, NoMatchError
from catalog_agent.layout import Layout
from catalog_agent.local import FILE, LINK_OUTSIDE, SPECIAL, LocalEntry
from catalog_agent.patterns import parse
from catalog_agent.run_state import METADATA, RunState

H1, H2 = "1" * 64, "2" * 64


def state(objects: dict[str, int], recorded: dict[str, str] | None = None,
          meta: dict[str, str] | None = None) -> RunState:
    s = RunState("p/run/")
    s.add_objects(objects.items())
    for rel, sha in (meta or {}).items():
        s.record(rel, sha, objects[rel], False, "", source=METADATA)
    for rel, sha in (recorded or {}).items():
        s.record(rel, sha, objects[rel], False, "step1")
    return s


def entry(rel: str, kind: str = FILE, size: int = 3) -> LocalEntry:
    return LocalEntry(rel, kind, size, source=rel if kind == FILE else "")


def test_put_marks_files_the_catalog_already_holds() -> None:
    items = plan.plan_put([entry("a"), entry("b"), entry("c")], Layout("p/run/").key,
                          max_object_size=None)
    s = state({"a": 3, "b": 3}, recorded={"a": H1, "b": H2})
    assert [(i.key, plan.already_stored(i, H1, 3, s)) for i in items] == [
        ("p/run/a", True), ("p/run/b", False), ("p/run/c", False)]
    assert not plan.already_stored(items[0], H1, 4, s)  # same hash claimed, other size


def test_put_uses_object_metadata_when_no_manifest_records_it() -> None:
    (item,) = plan.plan_put([entry("a")], Layout("p/run/").key, max_object_size=None)
    assert plan.already_stored(item, H1, 3, state({"a": 3}, meta={"a": H1}))


def test_put_refuses_a_file_larger_than_the_store_holds_before_sending_anything() -> None:
    from catalog_agent.errors import TransferError
    from catalog_agent.stores.s3 import MAX_OBJECT_SIZE

    files = [entry("small"), entry("huge", size=MAX_OBJECT_SIZE + 1)]
    with pytest.raises(TransferError, match="'huge'.*nothing was sent"):
        plan.plan_put(files, Layout("p/run/").key, max_object_size=MAX_OBJECT_SIZE)
    assert len(plan.plan_put([entry("at-limit", size=MAX_OBJECT_SIZE)], Layout("p/run/").key,
                             max_object_size=MAX_OBJECT_SIZE)) == 1


def test_put_refuses_a_file_whose_key_the_store_cannot_hold_before_sending_anything() -> None:
    """Skipped with a warning, such a file left the catalog silently without it (exit 0)."""
    long_name = "d/" + "x" * 1100
    with pytest.raises(plan.Refused) as refused:
        plan.plan_put([entry("fine"), entry(long_name), entry(long_name + "y")],
                      Layout("p/run/").key, max_object_size=None, max_key_bytes=1024)
    assert refused.value.exit_code == 6
    assert str(refused.value) == (f"refusing to put {long_name!r}: its key would be 1108 bytes, "
                                  f"more than the 1024 bytes a key of the store may hold (and 1 "
                                  f"more); nothing was sent")
    assert [r.relative for r in refused.value.refused] == [long_name, long_name + "y"]
    at_limit = "x" * (1024 - len("p/run/"))
    assert [i.key for i in plan.plan_put([entry(at_limit)], Layout("p/run/").key,
                                         max_object_size=None, max_key_bytes=1024)] == [
        "p/run/" + at_limit]


def test_strict_verify_refuses_an_object_with_no_recorded_hash() -> None:
    s = state({"a": 3, "b": 3}, recorded={"a": H1})
    assert len(plan.select_get(s, parse(["**"]), allow_missing=False, where="w")) == 2
    with pytest.raises(IntegrityError, match="'p/run/b'.*strict_verify"):
        plan.select_get(s, parse(["**"]), allow_missing=False, where="w", strict_verify=True)
    assert len(plan.select_get(s, parse(["a"]), allow_missing=False, where="w",
                               strict_verify=True)) == 1


def test_a_refusal_counts_every_path_and_keeps_the_first_thousand() -> None:
    """A million unrecorded objects must not become a million refusal records."""
    names = {f"f{n:05}": 1 for n in range(plan.REFUSALS_KEPT + 500)}
    with pytest.raises(plan.Refused) as refused:
        plan.select_get(state(names), parse(["**"]), allow_missing=False, where="w",
                        strict_verify=True)
    assert "'p/run/f00000'" in str(refused.value) and "(and 1,499 more)" in str(refused.value)
    assert len(refused.value.refused) == plan.REFUSALS_KEPT


def test_select_put_skips_links_and_special_files_unless_strict() -> None:
    entries = [entry("ok"), entry("link", LINK_OUTSIDE), entry("fifo", SPECIAL)]
    files, skipped = plan.select_put(entries, parse(["**"]), allow_missing=False,
                                     strict_links=False, where="d")
    assert [f.relative for f in files] == ["ok"]
    assert {s.relative for s in skipped} == {"link", "fifo"}
    with pytest.raises(IntegrityError, match="link"):
        plan.select_put(entries, parse(["**"]), allow_missing=False, strict_links=True,
                        where="d")


def test_a_pattern_matching_nothing_is_an_error_naming_it() -> None:
    with pytest.raises(NoMatchError, match=r"'\*\.parquet'"):
        plan.select_put([entry("a.csv")], parse(["*.csv", "*.parquet"]), allow_missing=False,
                        strict_links=False, where="d")
    files, _ = plan.select_put([entry("a.csv")], parse(["*.csv", "*.parquet"]),
                               allow_missing=True, strict_links=False, where="d")
    assert [f.relative for f in files] == ["a.csv"]


def test_get_takes_expected_hashes_from_manifests_then_metadata() -> None:
    s = state({"a": 3, "b": 3, "c": 3}, recorded={"a": H1}, meta={"b": H2})
    items = plan.select_get(s, parse(["**"]), allow_missing=False, where="w")
    assert {i.relative: i.expected_sha256 for i in items.items()} == {"a": H1, "b": H2,
                                                                      "c": None}


@pytest.mark.parametrize("hostile", ["../escape", "a/../../b", "/abs", "a//b", "a\\b", "a\x00b",
                                     "./a", "x" * 256, "a/" + "y" * 300])
def test_get_refuses_keys_that_leave_the_folder(hostile: str) -> None:
    s = state({"fine": 3, hostile: 3})
    with pytest.raises(IntegrityError, match="refusing key"):
        plan.select_get(s, parse(["**"]), allow_missing=False, where="w")


def test_get_skips_local_files_with_the_expected_hash() -> None:
    items = plan.select_get(state({"a": 3, "b": 3, "c": 3}, recorded={"a": H1, "b": H1}),
                            parse(["**"]), allow_missing=False, where="w")
    local = {"a": H1, "b": H2}
    planned = plan.plan_get(items, lambda rel, size: local.get(rel))
    assert {i.relative: i.unchanged for i in planned.items()} == {"a": True, "b": False,
                                                                  "c": False}
    assert [i.relative for i in planned.moving()] == ["b", "c"]


def test_sync_copies_every_data_object_into_the_new_run() -> None:
    items, count, size = plan.plan_sync(state({"d/b": 2, "a": 1}), "p/run2/")
    assert [(i.source_key, i.target_key) for i in items] == [
        ("p/run/a", "p/run2/a"), ("p/run/d/b", "p/run2/d/b")]
    assert (count, size) == (2, 3)


def test_the_state_finds_rows_by_bisection_whatever_order_the_listing_came_in() -> None:
    s = state({"b/2": 2, "a.txt": 1, "a/1": 3, "é": 4})
    assert s.names == ["a.txt", "a/1", "b/2", "é"]  # code point order: S3's UTF-8 order
    assert [s.sizes[s.find(n)] for n in ("a/1", "é")] == [3, 4]
    assert s.find("a") is None and "b/2" in s and "c" not in s


def test_a_stronger_record_wins_and_a_weaker_one_never_replaces_it() -> None:
    from catalog_agent.run_state import MANIFEST, RUN_LOG

    s = state({"a": 3})
    s.record("a", H2, 3, False, "", source=METADATA)
    assert s.expected("a") == (H2, METADATA)
    s.record("a", H1, -1, False, "magnus-step", source=RUN_LOG)
    assert s.expected("a") == (H1, RUN_LOG)
    s.record("a", H2, 3, True, "agent-step", source=MANIFEST)
    s.record("a", H1, -1, False, "late-log", source=RUN_LOG)
    assert s.expected("a") == (H2, MANIFEST) and s.step(s.find("a")) == "agent-step"
    assert s.catalog_sha256("a") == H2
    s.record("a", H1, 99, False, "other", source=MANIFEST)  # a newer manifest, other size
    assert s.catalog_sha256("a") is None and s.expected("a") == (H1, MANIFEST)
