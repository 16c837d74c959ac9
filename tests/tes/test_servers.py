"""The published-health rules of tesp_api/tes/servers.py: which engine's view of a server counts."""

from __future__ import annotations

from tesp_api.tes.servers import Contact, HealthView, ServerHealth, current_health

NOW = 1_764_600_000.0


def view(holder: str, age: float, up: bool, interval: float = 10.0) -> HealthView:
    return HealthView(holder, NOW - age, interval, {"a": ServerHealth("a", up=up)})


def test_the_newest_fresh_view_of_a_server_counts() -> None:
    health = current_health([view("old", 20, up=True), view("new", 1, up=False)], NOW)
    assert health["a"][0].holder == "new" and health["a"][1].up is False


def test_a_view_older_than_three_intervals_and_five_seconds_no_longer_counts() -> None:
    assert current_health([view("gone", 3 * 10 + 5.5, up=True)], NOW) == {}
    assert current_health([view("slow", 3 * 10 + 4.5, up=True)], NOW)["a"][0].holder == "slow"


def test_a_view_survives_its_payload_and_junk_in_it_falls_back_to_defaults() -> None:
    sent = HealthView(
        "w1",
        NOW,
        2.0,
        {"a": ServerHealth("a", up=False, failures=3, last_error="refused")},
        {"a": Contact("ok", NOW)},
    )
    assert HealthView.from_payload("w1", NOW, sent.payload()) == sent
    junk = HealthView.from_payload("w1", NOW, {"interval": "x", "servers": {"a": {"failures": "3"}, "b": 1}})
    assert junk.interval == 10.0 and junk.servers == {"a": ServerHealth("a")} and junk.contacts == {}
