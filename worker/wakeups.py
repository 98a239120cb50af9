"""Which supervisor claims a new job: one per job, not every idle one (no herd of empty claims).

Every supervisor's LISTEN connection hears of every new job (``background_jobs_new``). Each
claim costs a commit, so if every idle supervisor claimed on every notification, a job would
cost each of the others an empty claim. Instead, a one-job notification falls to one
supervisor: the one whose place among the listening supervisors (their LISTEN backends' pids,
in order, refreshed with every reap) the sender's pid hashes to. The others stay asleep.

A payload ``*<type>`` asks every idle supervisor to claim: a statement inserting (or making
claimable again) many jobs sends it (010_cheaper_notify.sql), and so does a supervisor that a
job fell to while it had no free process (a relay: one commit, at most one per RELAY_INTERVAL
whoever sends it).

Views of the peers can disagree for a moment (a supervisor starting or stopping): a job may
then fall to no one until the fallback poll, seconds later, never for ever.
"""

from __future__ import annotations

from bgjobs.core.channels import EVERYONE

#: At most one wake-up of every idle supervisor per this many seconds, from anyone.
RELAY_INTERVAL = 0.1


class Wakeups:
    def __init__(self, claims_for_all: bool) -> None:
        #: False for a supervisor limited to some types: it claims on every notification of
        #: its types (and peers never count on it for theirs).
        self.claims_for_all = claims_for_all
        self.listen_pid = 0
        #: the LISTEN backends of the supervisors sharing new jobs with us, in order
        self.peers: list[int] = []
        #: types of jobs that fell to us and that we have not claimed yet
        self.unclaimed: set[str] = set()
        self.last_everyone = float("-inf")
        #: many jobs may be waiting (a '*' wake-up, a poll, a start): keep claiming while claims
        #: come back full; cleared by a claim that was not
        self.sweep = True

    def wake(self, payload: str, sender: int, types: tuple[str, ...], now: float) -> bool:
        """Whether a background_jobs_new notification from backend ``sender`` is ours to act on."""
        everyone = payload.startswith(EVERYONE)
        job_type = payload[len(EVERYONE):] if everyone else payload
        if job_type not in types:
            return False
        if everyone:
            self.last_everyone = now
            self.sweep = True
            return True
        if self.falls_to_us(sender):
            self.unclaimed.add(job_type)
            return True
        return False

    def falls_to_us(self, sender: int) -> bool:
        """Whether a job enqueued by backend ``sender`` is ours (or we cannot tell: claim)."""
        if not self.claims_for_all or self.listen_pid not in self.peers:
            return True
        place = (sender * 2654435761) % 2**32 % len(self.peers)
        return self.peers[place] == self.listen_pid

    def claimed(self, full: bool) -> None:
        self.unclaimed.clear()
        if not full:
            self.sweep = False

    def relay(self, types: set[str], now: float) -> set[str]:
        """The types to wake every idle supervisor for now (empty: nobody needs it)."""
        if not types or len(self.peers) == 1 or now - self.last_everyone < RELAY_INTERVAL:
            return set()
        relay = set(types)  # may be self.unclaimed itself
        self.last_everyone = now
        self.unclaimed.clear()
        return relay
