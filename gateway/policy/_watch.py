"""Watches the policy file and asks for a reload when its content changes.

Polling (mtime, size) every ``interval_s`` costs one ``stat`` and works on every filesystem,
including Kubernetes ConfigMap mounts, where the file is swapped through a symlink and
inotify on the old inode would see nothing. A changed stat is confirmed by the content's hash,
so ``touch`` or a rewrite with identical bytes does not reload; a bad file is reported once,
not on every tick, until its content changes again. A file that disappears is reported too
(the running policy stays); when it comes back, or when the last reload failed and the file
is written again (even with the running policy's bytes), it is reloaded, so an error clears
as soon as the file is good.
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

log = logging.getLogger("prism.policy.watch")


def file_digest(path: Path) -> str | None:
    try:
        return hashlib.sha256(path.read_bytes()).hexdigest()
    except OSError:
        return None


class PolicyWatcher:
    def __init__(
        self,
        path: Path,
        interval_s: float,
        reload: Callable[[], Awaitable[Any]],
        failing: Callable[[], bool] = lambda: False,
    ) -> None:
        self.path = path
        self.interval_s = interval_s
        self.reload = reload
        #: whether the last reload was refused (then identical bytes are worth another try)
        self.failing = failing
        self._stat: tuple[float, int] | None = self._read_stat()
        #: hash of the content last loaded or refused
        self.digest: str | None = file_digest(path)
        self._task: asyncio.Task[None] | None = None
        self.checks = 0

    def _read_stat(self) -> tuple[float, int] | None:
        try:
            st = self.path.stat()
        except OSError:
            return None
        return (st.st_mtime, st.st_size)

    async def check(self) -> bool:
        """One poll; True when the content changed and a reload was attempted."""
        self.checks += 1
        stat = self._read_stat()
        if stat == self._stat:
            return False
        self._stat = stat
        digest = await asyncio.to_thread(file_digest, self.path)
        if digest is None and self.digest is None:
            return False  # still missing (or unreadable): reported when it went
        if digest is not None and digest == self.digest and not self.failing():
            return False
        self.digest = digest
        if digest is None:
            log.error("policy file %s is gone; the running policy stays", self.path)
        else:
            log.info("policy file %s changed; reloading", self.path)
        try:
            await self.reload()
        except Exception as exc:  # the reload logs and records its own refusal
            log.debug("watch-triggered reload failed: %r", exc)
        return True

    async def run(self) -> None:
        while True:
            await asyncio.sleep(self.interval_s)
            try:
                await self.check()
            except Exception:  # a watcher that dies silently is worse than a noisy one
                log.exception("policy watcher check failed")

    def start(self) -> None:
        if self._task is None and self.interval_s > 0:
            self._task = asyncio.create_task(self.run(), name="prism-policy-watch")

    async def aclose(self) -> None:
        if self._task is not None:
            self._task.cancel()
            await asyncio.gather(self._task, return_exceptions=True)
            self._task = None
