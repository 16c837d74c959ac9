"""The task state machine.

Every state change in the service goes through the store's compare-and-set with an *expected*
set of states taken from here, so a late or duplicated event (a Pulsar status that arrives after a
cancel, a second worker) can never move a task backwards or out of a final state.
"""

from __future__ import annotations

from tesp_api.tes.models import TesState

FINAL_STATES: frozenset[TesState] = frozenset(
    {
        TesState.COMPLETE,
        TesState.EXECUTOR_ERROR,
        TesState.SYSTEM_ERROR,
        TesState.CANCELED,
        TesState.PREEMPTED,
    }
)

ACTIVE_STATES: frozenset[TesState] = frozenset(
    {TesState.QUEUED, TesState.INITIALIZING, TesState.RUNNING, TesState.PAUSED, TesState.CANCELING}
)

# Which states a task may move to from each state. CANCELING is never shown (clients such as
# py-tes 0.4 do not know it): cancel goes straight to CANCELED and the engine cleans up after.
TRANSITIONS: dict[TesState, frozenset[TesState]] = {
    TesState.UNKNOWN: frozenset({TesState.QUEUED}),
    TesState.QUEUED: frozenset({TesState.INITIALIZING, TesState.CANCELED, TesState.SYSTEM_ERROR}),
    TesState.INITIALIZING: frozenset(
        {
            TesState.RUNNING,
            TesState.CANCELED,
            TesState.SYSTEM_ERROR,
            TesState.EXECUTOR_ERROR,
            TesState.COMPLETE,
            TesState.QUEUED,
            TesState.PREEMPTED,
        }
    ),
    # RUNNING -> INITIALIZING: a job Pulsar lost is prepared afresh (engine.rerun_lost);
    # PREEMPTED: lost work (Pulsar lost the job after it started), docs/engine.md.
    TesState.RUNNING: frozenset(
        {
            TesState.COMPLETE,
            TesState.EXECUTOR_ERROR,
            TesState.SYSTEM_ERROR,
            TesState.CANCELED,
            TesState.PREEMPTED,
            TesState.INITIALIZING,
        }
    ),
    TesState.PAUSED: frozenset({TesState.RUNNING, TesState.CANCELED, TesState.SYSTEM_ERROR}),
    TesState.CANCELING: frozenset({TesState.CANCELED}),
}
for _final in FINAL_STATES:
    TRANSITIONS[_final] = frozenset()

CANCELABLE_STATES: frozenset[TesState] = frozenset(
    s for s, targets in TRANSITIONS.items() if TesState.CANCELED in targets
)


def is_final(state: TesState) -> bool:
    return state in FINAL_STATES


def can_move(current: TesState, new: TesState) -> bool:
    return new in TRANSITIONS.get(current, frozenset())


def sources_of(new: TesState) -> frozenset[TesState]:
    """States from which ``new`` may be reached: the *expected* set for a compare-and-set."""
    return frozenset(s for s, targets in TRANSITIONS.items() if new in targets)
