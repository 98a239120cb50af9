"""One supervisor claims a new job, not every idle one (worker/wakeups.py)."""

from __future__ import annotations

from bgjobs.worker.wakeups import RELAY_INTERVAL, Wakeups

TYPES = ("noop", "report")


def fleet(pids: list[int]) -> list[Wakeups]:
    out = []
    for pid in pids:
        w = Wakeups(claims_for_all=True)
        w.listen_pid, w.peers = pid, sorted(pids)
        out.append(w)
    return out


def test_each_one_job_notification_wakes_exactly_one_of_the_supervisors():
    supervisors = fleet([4100, 4230, 5000, 5120])
    woken_by = {}
    for sender in range(3000, 3400):
        woken = [w.listen_pid for w in supervisors if w.wake("noop", sender, TYPES, 0.0)]
        assert len(woken) == 1, (sender, woken)
        woken_by[sender] = woken[0]
    # ...and the senders spread over all of them.
    assert set(woken_by.values()) == {4100, 4230, 5000, 5120}


def test_many_jobs_wake_everyone_and_other_types_no_one():
    supervisors = fleet([1, 2, 3])
    assert all(w.wake("*noop", 77, TYPES, 0.0) for w in supervisors)
    assert not any(w.wake("other", 77, TYPES, 0.0) for w in supervisors)
    assert not any(w.wake("*other", 77, TYPES, 0.0) for w in supervisors)


def test_a_supervisor_that_cannot_tell_its_place_or_runs_some_types_claims_anyway():
    lost = Wakeups(claims_for_all=True)
    lost.listen_pid, lost.peers = 9, [1, 2]  # its LISTEN backend not among those seen
    typed = Wakeups(claims_for_all=False)
    typed.listen_pid, typed.peers = 1, [1, 2, 3]
    assert all(w.wake("noop", sender, TYPES, 0.0) for w in (lost, typed)
               for sender in range(100))


def test_jobs_that_fell_to_a_busy_supervisor_are_relayed_at_most_once_per_interval():
    [w, other] = fleet([1, 2])
    sender = next(s for s in range(1000) if w.wake("noop", s, TYPES, 0.0))
    assert w.unclaimed == {"noop"}
    assert w.relay(w.unclaimed, 1.0) == {"noop"} and w.unclaimed == set()
    assert w.relay({"noop"}, 1.0 + RELAY_INTERVAL / 2) == set()  # someone just did
    other.wake("*noop", sender, TYPES, 5.0)  # a relay heard from a peer counts too
    assert other.relay({"noop"}, 5.0 + RELAY_INTERVAL / 2) == set()
    assert other.relay({"noop"}, 5.0 + 2 * RELAY_INTERVAL) == {"noop"}
    [alone] = fleet([1])
    assert alone.relay({"noop"}, 100.0) == set()  # nobody to relay to


def test_only_a_wake_for_many_keeps_a_supervisor_claiming_while_claims_come_back_full():
    [w, _] = fleet([1, 2])
    w.claimed(full=False)
    assert not w.sweep
    sender = next(s for s in range(1000) if w.falls_to_us(s))
    assert w.wake("noop", sender, TYPES, 0.0) and not w.sweep  # one job fell to us
    w.claimed(full=True)
    assert not w.sweep  # its claim was full: that says nothing of other jobs
    assert w.wake("*noop", sender, TYPES, 1.0) and w.sweep  # many jobs
    w.claimed(full=True)
    assert w.sweep
    w.claimed(full=False)
    assert not w.sweep
