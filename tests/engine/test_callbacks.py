"""Signed status callbacks (docs/callbacks.md): accepted at create under the SSRF rules, written to
the store's outbox with each state change, delivered signed per Standard Webhooks to a real local
HTTP receiver (allowed by callbacks.allowed_prefixes, as only tests do), retried, in order, at
least once, and none lost across a kill -9 of a real ``tesp-api serve``."""

from __future__ import annotations

import asyncio
import json
import os
import sqlite3
import subprocess
import sys
import time
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from standardwebhooks import Webhook

from tesp_api.api.app import create_app
from tesp_api.config.settings import Settings
from tesp_api.engine.callbacks import CallbackDelivery, backoff_seconds
from tesp_api.store.sqlite import SqliteTaskStore
from tesp_api.tes.ids import new_task_id
from tesp_api.tes.models import TesExecutor, TesState, TesTask
from tests.engine.serve_process import ServeProcess
from tests.services.pulsar import LocalPulsar
from tests.services.tesp_serve import free_port
from tests.services.webhook_receiver import Receiver, new_secret, webhook_receiver

BASE = "/ga4gh/tes/v1"
DOCS = Path(__file__).resolve().parents[2] / "docs" / "callbacks.md"


def callback_settings(tmp: Path, secret: str | None, prefixes: list[str], **callbacks: Any) -> Settings:
    conf: dict[str, Any] = {
        "allowed_prefixes": prefixes,
        "backoff_initial": 0.05,
        "backoff_max": 0.2,
        "poll_interval": 0.05,
        **callbacks,
    }
    if secret:
        conf["secret"] = secret
    return Settings.model_validate(
        {
            "callbacks": conf,
            "db": {"sqlite_path": str(tmp / "tasks.sqlite3")},
            "engine": {"work_dir": str(tmp)},
        }
    )


@pytest.fixture
def receiver() -> Iterator[Receiver]:
    with webhook_receiver() as r:
        yield r


@pytest.fixture
async def store(tmp_path: Path) -> AsyncIterator[SqliteTaskStore]:
    s = SqliteTaskStore(str(tmp_path / "tasks.sqlite3"))
    await s.open()
    yield s
    await s.close()


def new_task(url: str) -> TesTask:
    return TesTask(
        id=new_task_id(), executors=[TesExecutor(image="alpine", command=["true"])], callback_url=url
    )


async def deliver_all(delivery: CallbackDelivery, store: SqliteTaskStore, timeout: float = 30) -> None:
    """Run the real loop until the outbox is empty."""
    await delivery.start()
    try:
        deadline = time.monotonic() + timeout
        while await store.pending_callbacks():
            assert time.monotonic() < deadline, "the outbox did not empty"
            await asyncio.sleep(0.05)
    finally:
        await delivery.stop()


# -- create: which callback_url is accepted ---------------------------------------------------


async def post_task(settings: Settings, store: SqliteTaskStore, **fields: Any) -> httpx.Response:
    app = create_app(settings, store)
    body = {"executors": [{"image": "alpine", "command": ["true"]}], **fields}
    async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://tes.test") as c:
        return await c.post(f"{BASE}/tasks", json=body)


async def test_callback_url_is_refused_while_callbacks_have_no_secret(
    tmp_path: Path, store: SqliteTaskStore
) -> None:
    answer = await post_task(
        callback_settings(tmp_path, None, ["https://"]), store, callback_url="https://hooks.example.org/x"
    )
    assert answer.status_code == 400
    assert "callback_url" in answer.json()["msg"] and "callbacks.secret" in answer.json()["msg"]


async def test_callback_url_outside_the_allowed_prefixes_is_refused(
    tmp_path: Path, store: SqliteTaskStore
) -> None:
    settings = callback_settings(tmp_path, new_secret(), ["https://hooks.example.org/tes/"])
    answer = await post_task(settings, store, callback_url="https://hooks.example.org/other")
    assert answer.status_code == 400 and "allowed_prefixes" in answer.json()["msg"]
    lookalike = await post_task(settings, store, callback_url="https://hooks.example.org.evil.test/tes/")
    assert lookalike.status_code == 400


@pytest.mark.parametrize(
    "url",
    ["https://127.0.0.1/hook", "https://10.1.2.3/hook", "https://[::1]:8443/hook", "https://localhost/h"],
)
async def test_the_default_prefix_refuses_private_and_loopback_receivers(
    tmp_path: Path, store: SqliteTaskStore, url: str
) -> None:
    answer = await post_task(callback_settings(tmp_path, new_secret(), ["https://"]), store, callback_url=url)
    assert answer.status_code == 400, answer.text
    assert "callback_url" in answer.json()["msg"]


@pytest.mark.parametrize(
    "url",
    ["http://hooks.example.org/x", "https://user:pw@hooks.example.org/x", "https://hooks.example.org/x#f"],
)
async def test_plain_http_credentials_and_fragments_are_refused_by_default(
    tmp_path: Path, store: SqliteTaskStore, url: str
) -> None:
    answer = await post_task(callback_settings(tmp_path, new_secret(), ["https://"]), store, callback_url=url)
    assert answer.status_code == 400
    assert "pw" not in answer.text


async def test_a_prefix_naming_the_control_plane_still_refuses_it(
    tmp_path: Path, store: SqliteTaskStore
) -> None:
    settings = callback_settings(tmp_path, new_secret(), ["http://127.0.0.1:8913/"])  # the default Pulsar url
    answer = await post_task(settings, store, callback_url="http://127.0.0.1:8913/jobs")
    assert answer.status_code == 400 and "control plane" in answer.json()["msg"]


async def test_callback_url_is_a_known_field_shown_in_basic_and_full_views_only(
    tmp_path: Path, store: SqliteTaskStore, receiver: Receiver
) -> None:
    settings = callback_settings(tmp_path, receiver.secret, [receiver.url + "/"])
    assert settings.api.reject_unknown_fields
    url = f"{receiver.url}/hooks/1?token=s3cret"
    answer = await post_task(settings, store, callback_url=url)
    assert answer.status_code == 200, answer.text
    task_id = answer.json()["id"]
    app = create_app(settings, store)
    async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://tes.test") as c:
        views = {
            v: (await c.get(f"{BASE}/tasks/{task_id}", params={"view": v})).json()
            for v in ("MINIMAL", "BASIC", "FULL")
        }
    assert "callback_url" not in views["MINIMAL"]
    for view in ("BASIC", "FULL"):
        assert views[view]["callback_url"] == f"{receiver.url}/hooks/1?token=***"  # a token is masked


# -- delivery ---------------------------------------------------------------------------------


async def test_a_state_change_is_posted_as_the_basic_view_signed_per_standard_webhooks(
    tmp_path: Path, store: SqliteTaskStore, receiver: Receiver
) -> None:
    settings = callback_settings(tmp_path, receiver.secret, [receiver.url + "/"])
    record = await store.create(new_task(f"{receiver.url}/hooks/a"), None)
    await store.update(record.id, state=TesState.CANCELED)
    await deliver_all(CallbackDelivery(settings, store), store)
    first, second = receiver.deliveries
    assert first.path == "/hooks/a" and first.verified and second.verified
    assert [first.task["state"], second.task["state"]] == ["QUEUED", "CANCELED"]
    assert first.task["id"] == record.id and first.task["executors"][0]["command"] == ["true"]
    assert first.headers["content-type"] == "application/json"
    assert first.headers["webhook-id"] != second.headers["webhook-id"]
    assert first.headers["webhook-signature"].startswith("v1,")
    assert abs(int(first.headers["webhook-timestamp"]) - time.time()) < 120
    # The signature covers the body: a changed byte no longer verifies.
    tampered = first.body.replace(b"QUEUED", b"RUNNING")
    with pytest.raises(Exception, match="signature"):
        Webhook(receiver.secret).verify(tampered, first.headers)


async def test_a_failing_receiver_gets_the_same_event_again_until_it_answers_2xx(
    tmp_path: Path, store: SqliteTaskStore, receiver: Receiver
) -> None:
    receiver.answers = [503, 500, 429]
    settings = callback_settings(tmp_path, receiver.secret, [receiver.url + "/"])
    await store.create(new_task(f"{receiver.url}/hooks/b"), None)
    await deliver_all(CallbackDelivery(settings, store), store)
    assert [d.headers["x-answer"] for d in receiver.deliveries] == ["503", "500", "429", "204"]
    assert len({d.webhook_id for d in receiver.deliveries}) == 1  # one message, four attempts
    assert all(d.verified for d in receiver.deliveries)  # each attempt is signed afresh


async def test_an_event_is_dropped_after_max_attempts_and_the_task_is_untouched(
    tmp_path: Path, store: SqliteTaskStore, receiver: Receiver
) -> None:
    receiver.default_status = 500
    settings = callback_settings(tmp_path, receiver.secret, [receiver.url + "/"], max_attempts=3)
    record = await store.create(new_task(f"{receiver.url}/hooks/c"), None)
    await deliver_all(CallbackDelivery(settings, store), store)
    assert len(receiver.deliveries) == 3
    after = await store.get(record.id)
    assert after is not None and after.state == TesState.QUEUED and after.version == record.version
    assert not after.log.system_logs


async def test_events_of_one_task_arrive_in_state_order(
    tmp_path: Path, store: SqliteTaskStore, receiver: Receiver
) -> None:
    receiver.answers = [503]  # the first (QUEUED) fails once: the later ones must wait for it
    settings = callback_settings(tmp_path, receiver.secret, [receiver.url + "/"])
    record = await store.create(new_task(f"{receiver.url}/hooks/d"), None)
    for state in (TesState.INITIALIZING, TesState.RUNNING, TesState.COMPLETE):
        await store.update(record.id, state=state)
    await deliver_all(CallbackDelivery(settings, store), store)
    assert [d.task["state"] for d in receiver.accepted()] == ["QUEUED", "INITIALIZING", "RUNNING", "COMPLETE"]
    assert [d.task["state"] for d in receiver.deliveries] == [
        "QUEUED",
        "QUEUED",
        "INITIALIZING",
        "RUNNING",
        "COMPLETE",
    ]


async def test_callbacks_events_narrows_the_states_sent(
    tmp_path: Path, store: SqliteTaskStore, receiver: Receiver
) -> None:
    settings = callback_settings(
        tmp_path, receiver.secret, [receiver.url + "/"], events=["complete", "CANCELED"]
    )
    store.record_callbacks_for(
        frozenset(TesState(e) for e in settings.callbacks.events)
    )  # as open_store does
    record = await store.create(new_task(f"{receiver.url}/hooks/e"), None)
    await store.update(record.id, state=TesState.RUNNING)
    await store.update(record.id, state=TesState.COMPLETE)
    await deliver_all(CallbackDelivery(settings, store), store)
    assert [d.task["state"] for d in receiver.deliveries] == ["COMPLETE"]


async def test_redirects_are_never_followed(
    tmp_path: Path, store: SqliteTaskStore, receiver: Receiver
) -> None:
    receiver.answers = [302]
    settings = callback_settings(tmp_path, receiver.secret, [receiver.url + "/"], max_attempts=2)
    await store.create(new_task(f"{receiver.url}/hooks/f"), None)
    await deliver_all(CallbackDelivery(settings, store), store)
    assert [d.path for d in receiver.deliveries] == ["/hooks/f", "/hooks/f"]  # /elsewhere never asked


async def test_a_loopback_receiver_is_refused_at_delivery_unless_a_prefix_names_it(
    tmp_path: Path, store: SqliteTaskStore, receiver: Receiver
) -> None:
    # Stored as if accepted earlier (e.g. under other settings): delivery checks the guard again.
    settings = callback_settings(tmp_path, receiver.secret, ["http://"], max_attempts=2)
    await store.create(new_task(f"{receiver.url}/hooks/g"), None)
    await deliver_all(CallbackDelivery(settings, store), store)
    assert receiver.deliveries == []


async def test_two_deliverers_on_one_store_post_each_event_once(
    tmp_path: Path, store: SqliteTaskStore, receiver: Receiver
) -> None:
    settings = callback_settings(tmp_path, receiver.secret, [receiver.url + "/"], concurrency=2)
    for i in range(10):
        record = await store.create(new_task(f"{receiver.url}/hooks/{i}"), None)
        await store.update(record.id, state=TesState.CANCELED)
    other = SqliteTaskStore(str(tmp_path / "tasks.sqlite3"))  # a second replica: its own connection
    await other.open()
    try:
        first, second = CallbackDelivery(settings, store), CallbackDelivery(settings, other)
        await second.start()
        await deliver_all(first, store)
        await second.stop()
    finally:
        await other.close()
    ids = [d.webhook_id for d in receiver.deliveries]
    assert len(ids) == 20 and len(set(ids)) == 20


async def test_a_slow_receiver_holds_one_delivery_slot_not_the_others(
    tmp_path: Path, store: SqliteTaskStore, receiver: Receiver
) -> None:
    receiver.delays = {"/slow": 5.0}
    settings = callback_settings(tmp_path, receiver.secret, [receiver.url + "/"], concurrency=2)
    await store.create(new_task(f"{receiver.url}/slow"), None)
    for i in range(5):
        await store.create(new_task(f"{receiver.url}/fast/{i}"), None)
    await deliver_all(CallbackDelivery(settings, store), store)
    # The five fast ones went through the other slot while the slow one was still waiting.
    assert receiver.answered[-1] == "/slow"
    assert sorted(receiver.answered[:5]) == [f"/fast/{i}" for i in range(5)]


def test_backoff_doubles_from_the_initial_wait_up_to_the_maximum() -> None:
    waits = [backoff_seconds(a, 1.0, 30.0) for a in range(1, 8)]
    for attempt, wait in enumerate(waits, start=1):
        assert min(30.0, 2.0 ** (attempt - 1)) <= wait <= min(30.0, 2.0 ** (attempt - 1) + 1.0)


# -- the documented receiver, and kill -9 ------------------------------------------------------


def documented_receiver(tmp: Path) -> Path:
    text = DOCS.read_text()
    block = text.split("<!-- receiver.py -->", 1)[1].split("```python\n", 1)[1].split("```", 1)[0]
    path = tmp / "receiver.py"
    path.write_text(block)
    return path


class DocumentedReceiver:
    """docs/callbacks.md's receiver, run as written (a child process, stopped by its PID)."""

    def __init__(self, tmp: Path, port: int, secret: str) -> None:
        self.out = tmp / "receiver.out"
        with self.out.open("wb") as out:
            self.process = subprocess.Popen(
                [sys.executable, str(documented_receiver(tmp)), str(port)],
                env={**os.environ, "WEBHOOK_SECRET": secret},
                stdout=out,
                stderr=subprocess.STDOUT,
            )
        deadline = time.monotonic() + 30
        while True:
            try:
                httpx.get(f"http://127.0.0.1:{port}/", timeout=1)  # GET: 501 from http.server, but up
                break
            except httpx.TransportError:
                assert time.monotonic() < deadline, self.out.read_text()
                assert self.process.poll() is None, self.out.read_text()
                time.sleep(0.1)

    def lines(self) -> list[dict[str, Any]]:
        return [json.loads(line) for line in self.out.read_text().splitlines() if line.startswith("{")]

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.terminate()
            self.process.wait(10)


async def test_the_documented_receiver_accepts_a_real_delivery_and_rejects_a_forgery(
    tmp_path: Path, store: SqliteTaskStore
) -> None:
    secret, port = new_secret(), free_port()
    documented = DocumentedReceiver(tmp_path, port, secret)
    try:
        settings = callback_settings(tmp_path, secret, [f"http://127.0.0.1:{port}/"])
        record = await store.create(new_task(f"http://127.0.0.1:{port}/hook"), None)
        await deliver_all(CallbackDelivery(settings, store), store)
        forged = await asyncio.to_thread(
            httpx.post,
            f"http://127.0.0.1:{port}/hook",
            content=b'{"id":"x","state":"COMPLETE"}',
            headers={
                "webhook-id": "msg_1",
                "webhook-timestamp": str(int(time.time())),
                "webhook-signature": "v1,AAAA",
            },
        )
        assert forged.status_code == 400
        lines = documented.lines()
        assert lines[0]["id"] == record.id and lines[0]["state"] == "QUEUED"
        assert lines[1] == {"rejected": "no valid signature"}
    finally:
        documented.stop()


def outbox_rows(db: Path) -> list[tuple[str, str, str]]:
    """(event id, task id, state) of every undelivered event, in order, read from the file itself."""
    with sqlite3.connect(f"file:{db}?mode=ro", uri=True) as conn:
        rows = conn.execute(
            "SELECT event_id, task_id, state FROM callback_outbox ORDER BY event_seq"
        ).fetchall()
    return [(str(a), str(b), str(c)) for a, b, c in rows]


@pytest.mark.pulsar
@pytest.mark.slow
def test_no_callback_is_lost_across_a_kill_9_of_serve(pulsar: LocalPulsar, tmp_path: Path) -> None:
    """Tasks run to COMPLETE while their receiver is down; serve is killed -9 with every event still
    in the outbox; after the restart each one arrives, signed, in state order per task."""
    secret, port = new_secret(), free_port()
    env = {
        "TESP_API_CALLBACKS__SECRET": secret,
        "TESP_API_CALLBACKS__ALLOWED_PREFIXES": json.dumps([f"http://127.0.0.1:{port}/"]),
        "TESP_API_CALLBACKS__BACKOFF_INITIAL": "0.1",
        "TESP_API_CALLBACKS__BACKOFF_MAX": "0.5",
        "TESP_API_CALLBACKS__MAX_ATTEMPTS": "1000",
        "TESP_API_CALLBACKS__POLL_INTERVAL": "0.1",
        "TESP_API_CALLBACKS__LEASE_SECONDS": "5",  # the killed process's leases expire soon
    }
    serve = ServeProcess(tmp_path, pulsar.url, **env)
    serve.start()
    documented: DocumentedReceiver | None = None
    try:
        ids = []
        for i in range(3):
            answer = httpx.post(
                f"{serve.url}{BASE}/tasks",
                json={
                    "executors": [{"image": "alpine", "command": ["echo", str(i)]}],
                    "callback_url": f"http://127.0.0.1:{port}/hooks/{i}",
                },
                timeout=30,
            )
            assert answer.status_code == 200, answer.text
            ids.append(answer.json()["id"])
        deadline = time.monotonic() + 180
        while True:
            states = [httpx.get(f"{serve.url}{BASE}/tasks/{t}", timeout=30).json()["state"] for t in ids]
            if all(s == "COMPLETE" for s in states):
                break
            assert time.monotonic() < deadline, states
            time.sleep(0.3)
        serve.kill()
        pending = outbox_rows(tmp_path / "tasks.sqlite3")
        for task_id in ids:
            written = [state for _, t, state in pending if t == task_id]
            assert written[0] == "QUEUED" and written[-1] == "COMPLETE", written
        documented = DocumentedReceiver(tmp_path, port, secret)
        serve.start()
        deadline = time.monotonic() + 120
        wanted = {event_id for event_id, _, _ in pending}
        while not wanted <= {line.get("webhook-id") for line in documented.lines()}:
            assert time.monotonic() < deadline, (wanted, documented.lines())
            time.sleep(0.2)
        lines = documented.lines()
        assert not [line for line in lines if "rejected" in line]
        for task_id in ids:
            firsts: list[str] = []
            for line in lines:
                if line["id"] == task_id and line["webhook-id"] not in firsts:
                    firsts.append(line["webhook-id"])
            assert firsts == [event_id for event_id, t, _ in pending if t == task_id]  # in state order
        deadline = time.monotonic() + 30
        while outbox_rows(tmp_path / "tasks.sqlite3"):
            assert time.monotonic() < deadline
            time.sleep(0.2)
        assert secret.removeprefix("whsec_") not in serve.log_file.read_text()  # the key is never logged
    finally:
        serve.stop()
        if documented is not None:
            documented.stop()


@pytest.fixture(scope="module")
def mongodb_uri() -> Iterator[str]:
    from tests.services.mongoeco import MongoUnavailable, mongodb_server

    try:
        with mongodb_server() as uri:
            yield uri
    except MongoUnavailable as exc:
        pytest.skip(f"no MongoDB to test against: {exc}")


async def test_delivery_from_a_mongodb_outbox_is_signed_and_in_state_order(
    tmp_path: Path, receiver: Receiver, mongodb_uri: str
) -> None:
    from tesp_api.store.mongo import MongoTaskStore

    database = f"tesp_cb_{new_task_id()[:8]}"
    mongo = MongoTaskStore(mongodb_uri, database=database)
    await mongo.open()
    try:
        receiver.answers = [503]
        settings = callback_settings(tmp_path, receiver.secret, [receiver.url + "/"])
        record = await mongo.create(new_task(f"{receiver.url}/hooks/m"), None)
        for state in (TesState.INITIALIZING, TesState.RUNNING, TesState.EXECUTOR_ERROR):
            await mongo.update(record.id, state=state)
        delivery = CallbackDelivery(settings, mongo)
        await delivery.start()
        try:
            deadline = time.monotonic() + 30
            while await mongo.pending_callbacks():
                assert time.monotonic() < deadline
                await asyncio.sleep(0.05)
        finally:
            await delivery.stop()
        states = [d.task["state"] for d in receiver.accepted()]
        assert states == ["QUEUED", "INITIALIZING", "RUNNING", "EXECUTOR_ERROR"]
        assert all(d.verified for d in receiver.deliveries)
    finally:
        await mongo.close()
        from pymongo import MongoClient

        client: MongoClient[dict[str, object]]
        with MongoClient(mongodb_uri) as client:
            client.drop_database(database)
