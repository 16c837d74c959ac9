"""Pick and open the task store the settings ask for: MongoDB when ``db.mongodb_uri`` is set
(the key tesp-api 0.2 used), otherwise the embedded SQLite file at ``db.sqlite_path``."""

from __future__ import annotations

import logging
from pathlib import Path

from tesp_api.config.settings import Settings
from tesp_api.store.port import TaskStore
from tesp_api.tes.models import TesState

logger = logging.getLogger(__name__)


async def open_store(settings: Settings) -> TaskStore:
    """An opened store; the caller closes it."""
    db = settings.db
    store: TaskStore
    if db.mongodb_uri is not None and db.mongodb_uri.get_secret_value():
        from tesp_api.store.mongo import MongoTaskStore  # pymongo only when MongoDB is used

        store = MongoTaskStore(
            db.mongodb_uri.get_secret_value(), database=db.mongodb_database, collection=db.mongodb_collection
        )
        logger.info(
            "task store: MongoDB, database %s, collection %s", db.mongodb_database, db.mongodb_collection
        )
    else:
        from tesp_api.store.sqlite import SqliteTaskStore

        path = Path(db.sqlite_path).expanduser()  # noqa: ASYNC240 - once, at start-up
        path.parent.mkdir(parents=True, exist_ok=True)
        store = SqliteTaskStore(str(path), synchronous=settings.db.sqlite_synchronous)
        logger.info("task store: SQLite file %s", path)
    # Which state changes of tasks with a callback_url write an outbox event (docs/callbacks.md).
    events = settings.callbacks.events
    store.record_callbacks_for(frozenset(TesState(e) for e in events) if events else None)
    await store.open()
    return store
