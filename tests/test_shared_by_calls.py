"""What the calls of one layer share lives until every expected call has let go, or until the
layer's join forgets it (calls a resumed run never re-runs cannot let go)."""

from __future__ import annotations

import threading

from moa_graph.engine.shared_by_calls import SharedByCalls


def test_an_object_outlives_its_first_holders_until_every_expected_call_let_go() -> None:
    shared: SharedByCalls[object] = SharedByCalls()
    first = shared.hold(("run", 1, (0, 1, 2)), callers=3, make=object)
    shared.release(("run", 1, (0, 1, 2)))
    assert shared.hold(("run", 1, (0, 1, 2)), callers=3, make=object) is first
    shared.release(("run", 1, (0, 1, 2)))
    assert len(shared) == 1  # the third call has not come yet
    assert shared.hold(("run", 1, (0, 1, 2)), callers=3, make=object) is first
    shared.release(("run", 1, (0, 1, 2)))
    assert len(shared) == 0


def test_the_join_forgets_one_layer_of_one_run_only() -> None:
    shared: SharedByCalls[object] = SharedByCalls()
    kept = [shared.hold(key, callers=2, make=object) for key in [("run", 2), ("other", 1)]]
    shared.hold(("run", 1), callers=2, make=object)
    shared.hold(("run", 1, (0, 1)), callers=2, make=object)
    shared.forget("run", 1)
    assert len(shared) == 2
    assert [shared.hold(key, callers=2, make=object) for key in [("run", 2), ("other", 1)]] == kept
    shared.release(("run", 1))  # a call ending after its layer was forgotten changes nothing
    assert len(shared) == 2


def test_calls_arriving_together_from_threads_share_one_object() -> None:
    shared: SharedByCalls[object] = SharedByCalls()
    made: list[object] = []

    def make() -> object:
        made.append(object())
        return made[-1]

    seen: list[object] = []
    barrier = threading.Barrier(8)

    def call() -> None:
        barrier.wait()
        seen.append(shared.hold(("run", 1), callers=8, make=make))
        shared.release(("run", 1))

    threads = [threading.Thread(target=call) for _ in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert len(made) == 1 and seen == made * 8
    assert len(shared) == 0


def test_an_abandoned_call_drops_its_object_and_a_later_call_starts_afresh() -> None:
    shared: SharedByCalls[object] = SharedByCalls()
    first = shared.hold(("run", 1), callers=3, make=object)
    shared.release(("run", 1))
    shared.hold(("run", 1), callers=3, make=object)
    shared.release(("run", 1), abandoned=True)  # the run was cancelled: none of it is kept
    assert len(shared) == 0
    assert shared.hold(("run", 1), callers=3, make=object) is not first


def test_calls_coming_again_after_all_came_get_a_new_object() -> None:
    shared: SharedByCalls[object] = SharedByCalls()
    first = shared.hold(("run", 1), callers=1, make=object)
    shared.release(("run", 1))
    assert shared.hold(("run", 1), callers=1, make=object) is not first


def test_objects_waiting_for_calls_that_never_come_are_bounded() -> None:
    shared: SharedByCalls[object] = SharedByCalls(max_idle=2)
    kept = {}
    for run in ("a", "b", "c"):
        kept[run] = shared.hold((run, 1), callers=2, make=object)
        shared.release((run, 1))  # its second call never comes
    assert len(shared) == 2  # the oldest went
    assert shared.hold(("a", 1), callers=2, make=object) is not kept["a"]
    assert shared.hold(("c", 1), callers=2, make=object) is kept["c"]
