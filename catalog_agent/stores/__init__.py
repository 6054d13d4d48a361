"""Catalog stores: S3 and a local folder, behind one small interface (:mod:`.base`)."""

from __future__ import annotations

import threading
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from catalog_agent.config import Config
    from catalog_agent.stores.base import Store


def open_store(config: Config, cancel: threading.Event | None = None) -> Store:
    """The store of the configured catalog type; S3 modules are imported only when used.

    ``cancel``: set by SIGTERM; retries and back-off waits stop at once when it is set.
    """
    if config.type == "file-system":
        from catalog_agent.stores.filesystem import FileSystemStore

        return FileSystemStore(config.catalog_location)
    from catalog_agent.stores.s3 import S3Store

    return S3Store.from_config(config, cancel)
