"""The one successor rule (``find_successor``) behind ``follow_batch`` and the gateway's
``PrefectOrchestrator.run_state``, on a real Prefect server: a batch handed from a crashed or
cancelled run to the run whose ``resumed_from`` names it."""

from __future__ import annotations

import pytest


@pytest.fixture
def runs(prefect_api: str):
    """A client and a helper creating flow runs in a given state with ``resumed_from`` set."""
    from prefect import flow, get_client

    @flow(name="successor-probe")
    def probe(resumed_from: str | None = None) -> None:
        """Never run: only its flow runs are created."""

    with get_client(sync_client=True) as client:

        def make(state, resumed_from=None):
            run = client.create_flow_run(probe, parameters={"resumed_from": resumed_from} if resumed_from else {})
            client.set_flow_run_state(run.id, state, force=True)
            return client.read_flow_run(run.id)

        yield client, make


def test_a_crashed_run_is_followed_to_the_run_resuming_it_and_the_gateway_sees_the_last(runs):
    from prefect.states import Cancelled, Completed, Crashed, Running

    from nightshift.api.tracker import PrefectOrchestrator
    from nightshift.orchestration.submit import find_successor

    client, make = runs
    spot = make(Crashed())
    make(Running(), resumed_from="some-other-run")  # a newer run resuming another batch is not it
    dedicated = make(Cancelled(), resumed_from=str(spot.id))
    last = make(Running(), resumed_from=str(dedicated.id))

    assert find_successor(client, spot).id == dedicated.id
    assert find_successor(client, dedicated).id == last.id
    assert find_successor(client, last) is None
    state = PrefectOrchestrator().run_state(str(spot.id))
    assert (state.flow_run_id, state.name) == (str(last.id), "Running")

    done = make(Completed())
    make(Running(), resumed_from=str(done.id))  # a finished run hands nothing over, whatever claims it
    assert PrefectOrchestrator().run_state(str(done.id)).flow_run_id == str(done.id)
