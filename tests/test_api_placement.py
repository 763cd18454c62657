"""driver.place_apis: where the APIs of an API per node run as nodes join and leave."""

from __future__ import annotations

from driver import follow_apis, known_apis, place_apis, replica_index


def test_each_alive_node_gets_one_api_in_the_order_of_its_id() -> None:
    assert place_apis("h", {"h", "b", "a"}, {}) == {"api": "h", "api-1": "a", "api-2": "b"}


def test_a_running_api_keeps_its_name_on_its_node_and_a_new_node_gets_the_lowest_free_name() -> None:
    known = {"api": "h", "api-2": "a"}  # api-1's node left and it is forgotten
    assert place_apis("h", {"h", "a", "c"}, known) == {"api": "h", "api-1": "c", "api-2": "a"}


def test_a_name_still_expected_is_not_handed_out_again() -> None:
    """api-1's node left in the same look as c joined: c gets api-3, and api-1 is left out of
    the placement, so it is forgotten (its old record would otherwise stand for the new API)."""
    known = {"api": "h", "api-1": "gone", "api-2": "b"}
    placed = place_apis("h", {"h", "b", "c"}, known)
    assert placed == {"api": "h", "api-2": "b", "api-3": "c"}


def test_without_api_nodes_node_the_others_are_still_placed_and_api_comes_back_with_it() -> None:
    known = {"api": "h", "api-1": "a", "api-2": "b"}
    assert place_apis(None, {"a", "b"}, known) == {"api-1": "a", "api-2": "b"}
    # API_NODE's node is back (a new id): `api` runs there again.
    assert place_apis("h2", {"h2", "a", "b"}, known) == {"api": "h2", "api-1": "a", "api-2": "b"}


def test_two_apis_on_one_node_keep_the_lower_name_and_an_api_of_a_lost_node_is_dropped() -> None:
    known = {"api": "h", "api-1": "a", "api-2": "a", "api-3": "gone", "api-4": None}
    assert place_apis("h", {"h", "a"}, known) == {"api": "h", "api-1": "a"}


def test_an_expected_api_whose_actor_went_while_its_node_is_alive_keeps_its_name_there() -> None:
    """Its node's raylet was killed and Ray has not yet declared the node dead (or the actor was
    killed for good): the node gets the same API again, never a second name (which would be
    expected on a dead node, after the first is forgotten, until the next look)."""
    known = {"api": "h", "api-1": "a", "api-2": "b"}  # api-2 no longer runs
    assert place_apis("h", {"h", "a", "b"}, known) == {"api": "h", "api-1": "a", "api-2": "b"}


def test_an_api_whose_actor_went_while_its_node_is_alive_is_started_again_under_its_name() -> None:
    running = {"api", "api-1"}  # api-2's actor is gone; the registry still expects it, on b
    known = known_apis(running, {"api": {"node": "h"}, "api-1": {"node": "a"}, "api-2": {"node": "b"}}, {})
    assert follow_apis("h", {"h", "a", "b"}, running, known) == ({"api-2": "b"}, {})


def test_api_is_retired_once_when_api_nodes_node_is_lost_and_started_again_when_it_is_back() -> None:
    beats = {"api": {"node": "h"}, "api-1": {"node": "a"}}
    known = known_apis({"api", "api-1"}, beats, {})
    assert follow_apis(None, {"a"}, {"api", "api-1"}, known) == ({}, {"api": "h"})
    # Retired: neither runs nor is expected, so the next looks leave it alone ...
    beats = {"api-1": {"node": "a"}}
    assert follow_apis(None, {"a"}, {"api-1"}, known_apis({"api-1"}, beats, {})) == ({}, {})
    # ... until API_NODE's node is back (a new id): `api` is started there.
    assert follow_apis("h2", {"h2", "a"}, {"api-1"}, known_apis({"api-1"}, beats, {})) == ({"api": "h2"}, {})


def test_an_api_is_where_it_beats_from_else_where_it_was_started() -> None:
    beats = {"api": {"node": "h"}, "api-1": {"node": None}, "scheduler": {"node": "h"}}
    started = {"api": "elsewhere", "api-1": "a", "api-2": "b"}
    assert known_apis({"api", "api-2", "api-3"}, beats, started) == {
        "api": "h", "api-1": "a", "api-2": "b", "api-3": None,
    }  # fmt: skip


def test_replica_index_reads_only_the_apis_names() -> None:
    assert [replica_index(n) for n in ("api", "api-12", "api-", "api-x", "api-²", "apis-1", "api.events")] == [
        0, 12, None, None, None, None, None,
    ]  # fmt: skip
