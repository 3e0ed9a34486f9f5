"""Which experiment arm gave which answer, so ``POST /v1/feedback`` can score it, once.

Answers are remembered in memory and, with Redis, shared with the other replicas at the next
sync: feedback may reach any replica. A claim makes each answer take one score, on any replica.
"""

from __future__ import annotations

import logging
from collections import OrderedDict

from ._counters import Answer, CounterStore

log = logging.getLogger("prism.experiments")

#: how long feedback on a request is accepted, and how many recent ids a process keeps
FEEDBACK_TTL_S = 24 * 3600
RECENT_REQUESTS = 200_000


class FeedbackLedger:
    def __init__(self, store: CounterStore) -> None:
        self.store = store
        #: request id -> (experiment, arm, unit hash) of recent experiment requests
        self._recent: OrderedDict[str, Answer] = OrderedDict()
        self._to_share: dict[str, Answer] = {}
        #: answers already scored by this process (the store knows the others')
        self._claimed: OrderedDict[str, None] = OrderedDict()

    def remember(self, request_id: str, name: str, arm: str, unit: int | None = None) -> None:
        """Which arm answered ``request_id`` (for which unit, hashed): feedback on it is that
        arm's quality, counted in that unit's figures."""
        self._recent[request_id] = Answer(name, arm, unit)
        if len(self._recent) > RECENT_REQUESTS:
            self._recent.popitem(last=False)
        if self.store.name == "redis":  # other replicas may receive the feedback
            self._to_share[request_id] = Answer(name, arm, unit)

    async def share(self) -> None:
        """Hand the answers remembered since the last call to the other replicas."""
        if not self._to_share:
            return
        shared, self._to_share = self._to_share, {}
        try:
            await self.store.remember(shared, FEEDBACK_TTL_S)
        except Exception as exc:  # feedback on these works on this replica only
            log.warning("request ids for feedback not shared: %r", exc)

    async def arm_of(self, request_id: str) -> Answer | None:
        """The (experiment, arm) of a request of the last ``FEEDBACK_TTL_S`` seconds, answered
        by this replica or (with Redis) any other; None when unknown or expired."""
        found = self._recent.get(request_id)
        return found if found is not None else await self.store.recall(request_id)

    async def claim(self, request_id: str) -> bool:
        """True the first time an answer is scored: one score per answer, on any replica."""
        if request_id in self._claimed:
            return False
        # the shared store first: if it cannot answer (503), a retry must still be able to
        # score the answer, so nothing is remembered here until the claim succeeded
        if not await self.store.claim(request_id, FEEDBACK_TTL_S):
            return False
        self._claimed[request_id] = None
        if len(self._claimed) > RECENT_REQUESTS:
            self._claimed.popitem(last=False)
        return True


__all__ = ["FEEDBACK_TTL_S", "RECENT_REQUESTS", "FeedbackLedger"]
