"""A run has one owner: a lease on `<run>/owner.json`, taken with a conditional create.

Starting (or resuming) a run claims it: `owner.json` is created with If-None-Match, so of two
processes with the same RUN_ID exactly one gets it. A background thread renews the lease every
third of LEASE_SECONDS with If-Match on the version it wrote last; a process that finds another
version there has lost the run and stops writing (`check`). A lease that was not renewed in
time expires, and the next process takes the run over (If-Match on the expired version) and
resumes from its checkpoint; on the same machine a lease whose process is gone is taken over
at once. The owner deletes `owner.json` as the last step of its run.

What this rests on: the store enforcing conditional writes (S3 does since 2024, a local folder
through job.runstore.local's lock) and roughly synchronised clocks between hosts for expiry (a host
whose clock runs ahead takes an expired-looking lease early; the owner then finds its renewal
refused and stops, so there is still one writer).
"""

from __future__ import annotations

import math
import os
import socket
import threading
import time
import uuid
from pathlib import Path

from job import logs
from job.config import MAX_LEASE_SECONDS
from job.errors import DataError, PreconditionFailed, TransientError
from job.runstore import objects
from job.runstore.layout import OWNER, RunFiles, to_json

# How far apart two hosts' clocks may be. A lease renewed later than now plus this, or lasting
# past now by more than the longest lease plus this, was not written by a sane clock (or was
# forged): it is nobody's, or it would block the run for as long as it claims.
CLOCK_SKEW_SECONDS = 300


class RunOwned(TransientError):
    """Another live process owns the run (exit 75: retry once it has finished or gone)."""


class LostOwnership(TransientError):
    """This process's lease was taken over; it must not write into the run any more."""


def _boot_id() -> str:
    try:
        return Path("/proc/sys/kernel/random/boot_id").read_text().strip()
    except OSError:
        return ""


def _pid_namespace() -> str:
    try:
        return os.readlink("/proc/self/ns/pid")
    except OSError:
        return ""


def process_start(pid: int) -> str | None:
    """The process's start time in clock ticks since boot (with the PID, it names one process
    even after the PID is reused); None when there is no such process."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    return stat.rsplit(")", 1)[1].split()[19]


class Lease:
    def __init__(self, files: RunFiles, seconds: int) -> None:
        self.files = files
        self.seconds = seconds
        self.etag: str | None = None
        self.lost: str | None = None
        self.me = {
            "owner": uuid.uuid4().hex,
            "host": socket.gethostname(),
            "boot_id": _boot_id(),
            "pid": os.getpid(),
            "process_start": process_start(os.getpid()),
            # Containers sharing a host name and kernel may not see each other's PIDs.
            "pid_ns": _pid_namespace(),
        }
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self.log = logs.get("job.ownership")

    @property
    def key(self) -> str:
        return self.files.key(OWNER)

    def _record(self) -> bytes:
        now = time.time()
        return to_json({**self.me, "renewed_at": now, "expires_at": now + self.seconds})

    def acquire(self) -> None:
        """Claim the run, or raise RunOwned naming the live owner."""
        store = self.files.store
        try:
            self.etag = store.put_bytes(self.key, self._record(), if_none_match=True)
            self._probe()
            return
        except PreconditionFailed:
            pass
        try:
            raw, etag = store.get_if_changed(self.key, None, limit=objects.OWNER.max_bytes)
        except DataError:  # too large to be a lease: nobody's, replaced in its version
            raw, etag = None, store.etag(self.key)
        holder = self.holder(raw)
        if raw is not None and self._alive(holder):
            left = float(holder["expires_at"]) - time.time()
            raise RunOwned(
                f"run {self.files.run_id} is owned by {str(holder.get('host'))[:64]} pid "
                f"{str(holder.get('pid'))[:12]} (lease for {left:.0f} s more); "
                "not starting a second copy"
            )
        try:  # expired, or its process is gone: take it over, unless someone else just did
            if etag is None:
                self.etag = store.put_bytes(self.key, self._record(), if_none_match=True)
            else:
                self.etag = store.put_bytes(self.key, self._record(), if_match=etag)
        except PreconditionFailed:
            raise RunOwned(f"run {self.files.run_id} was just claimed by another process") from None
        self.log.warning("lease_taken_over", previous=holder.get("host"), pid=holder.get("pid"))

    def holder(self, raw: bytes | None) -> dict:
        """The lease record read back; one that is not JSON is nobody's lease (taken over)."""
        if raw is None:
            return {}
        try:
            return objects.decode(raw, objects.OWNER, self.files.where(OWNER))
        except DataError:
            return {}

    def live_holder(self) -> dict | None:
        """The record of a live lease on the run (another process's), else None."""
        try:
            raw = self.files.store.get_bytes(self.key, limit=objects.OWNER.max_bytes)
        except DataError:  # too large to be a lease: nobody's
            return None
        holder = self.holder(raw)
        return holder if holder and self._alive(holder) else None

    def _probe(self) -> None:
        """A create that must fail, since the lease now exists: a store that lets it through
        ignores conditional writes, and then one owner per run is not guaranteed (what still
        holds: docs/run-contract.md)."""
        try:
            self.etag = self.files.store.put_bytes(self.key, self._record(), if_none_match=True)
        except PreconditionFailed:
            return
        self.log.warning(
            "conditional_writes_ignored",
            store=self.files.store.uri,
            consequence="two processes with the same RUN_ID could both write this run",
        )

    def _alive(self, holder: dict) -> bool:
        try:
            expires, renewed = float(holder["expires_at"]), float(holder["renewed_at"])
        except (KeyError, TypeError, ValueError):
            return False  # not a lease this job wrote: nothing to respect
        # A lease lasts at most an hour (LEASE_SECONDS): NaN, infinity or a date in the far
        # future (a clock run wild, or a hostile writer) would otherwise block the run for good.
        if not (math.isfinite(expires) and 0 < expires - renewed <= MAX_LEASE_SECONDS):
            return False
        now = time.time()
        if renewed > now + CLOCK_SKEW_SECONDS:
            return False
        if not now <= expires <= now + MAX_LEASE_SECONDS + CLOCK_SKEW_SECONDS:
            return False
        same_machine = all(holder.get(k) == self.me[k] for k in ("host", "boot_id", "pid_ns"))
        if same_machine and isinstance(holder.get("pid"), int):
            return process_start(holder["pid"]) == holder.get("process_start")
        return True

    def start(self) -> None:
        self._thread = threading.Thread(target=self._renew_loop, name="lease", daemon=True)
        self._thread.start()

    def _renew_loop(self) -> None:
        while not self._stop.wait(self.seconds / 3):
            try:
                self.etag = self.files.store.put_bytes(self.key, self._record(), if_match=self.etag)
            except PreconditionFailed:
                self.lost = "another process took the run over"
                self.log.error("lease_lost", reason=self.lost)
                return
            except Exception as exc:  # the store is down: the lease may still outlive it
                self.log.warning("lease_not_renewed", error=str(exc))

    def check(self) -> None:
        """Raise LostOwnership when the renewer has seen the lease taken over."""
        if self.lost:
            raise LostOwnership(f"run {self.files.run_id}: {self.lost}; stopped writing")

    def verify(self) -> None:
        """A synchronous check against the store, before a write that ends the run."""
        self.check()
        if self.files.store.etag(self.key) != self.etag:
            self.lost = "another process took the run over"
            self.check()

    def release(self) -> None:
        """Stop renewing and delete the lease, if it is still ours (best effort)."""
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=5)
        if self.lost or self.etag is None:
            return
        try:
            self.files.store.delete(self.key, if_match=self.etag)
        except PreconditionFailed:
            pass  # no longer ours: leave the new owner's lease alone
        except Exception as exc:  # it expires by itself
            self.log.warning("lease_not_released", error=str(exc))
