"""Where a file of the data folder lives in the catalog: the key layout (pure).

- ``run`` (the default): ``<prefix>/<run_id>/<path in the data folder>``;
- ``magnus``: ``<prefix>/<run_id>/<compute_data_folder>/<path in the data folder>``, the keys
  magnus-extensions' S3 catalog (and magnus's file-system catalog) write and read: magnus puts
  ``Path(compute_data_folder).glob(pattern)`` under the file's path relative to the working
  directory, so the folder's own relative name is part of every key.

The data folder's name is normalised as pathlib does it for magnus's put: ``data/``, ``./data``
and ``data//x`` are ``data`` and ``data/x``; ``.`` is the run's root. An absolute folder has no
place in such a key (magnus's own put fails on one), nor has ``..``: both are configuration
errors.
"""

from __future__ import annotations

from dataclasses import dataclass

from catalog_agent.errors import ConfigError

RUN = "run"
MAGNUS = "magnus"
LAYOUTS = (RUN, MAGNUS)


def magnus_folder(compute_data_folder: str, source: str = "") -> str:
    """The data folder's place in the run under layout magnus: '' for '.', else 'a/b'."""
    where = f" (from {source})" if source else ""
    if compute_data_folder.startswith("/"):
        raise ConfigError(
            f"compute_data_folder {compute_data_folder!r} is absolute, but layout magnus keeps "
            f"the folder's relative name in every key (<prefix>/<run_id>/<compute_data_folder>/"
            f"...), as magnus does: give it relative to the working directory (e.g. 'data') and "
            f"run the agent in the pipeline's working directory{where}")
    if "\\" in compute_data_folder or "\x00" in compute_data_folder:
        raise ConfigError(f"compute_data_folder {compute_data_folder!r} contains a backslash or "
                          f"NUL, which no key may hold under layout magnus{where}")
    segments = [seg for seg in compute_data_folder.split("/") if seg not in {"", "."}]
    if ".." in segments:
        raise ConfigError(f"compute_data_folder {compute_data_folder!r} has a '..' segment, "
                          f"which would put keys outside the run under layout magnus{where}")
    return "/".join(segments)


@dataclass(frozen=True)
class Layout:
    """The mapping between paths in the data folder and object keys of one run."""

    run_prefix: str  # '<prefix>/<run_id>/'
    folder: str = ""  # the data folder's place in the run: '' (layout run, or '.') or 'data'

    @property
    def data_prefix(self) -> str:
        return self.run_prefix + (self.folder + "/" if self.folder else "")

    def key(self, relative: str) -> str:
        """The object key of ``relative``, a path in the data folder."""
        return self.data_prefix + relative

    def in_run(self, relative: str) -> str:
        """``relative``'s path in the run (a key without ``<prefix>/<run_id>/``)."""
        return f"{self.folder}/{relative}" if self.folder else relative

    def relative(self, in_run: str) -> str | None:
        """The path in the data folder of a path in the run; None when it lies outside."""
        if not self.folder:
            return in_run
        head = self.folder + "/"
        if in_run.startswith(head) and len(in_run) > len(head):
            return in_run[len(head):]
        return None


def for_run(layout_name: str, compute_data_folder: str, run_prefix: str) -> Layout:
    """The layout of a command: the data folder counts in keys only under layout magnus."""
    if layout_name == MAGNUS:
        return Layout(run_prefix, magnus_folder(compute_data_folder))
    return Layout(run_prefix)
