"""IPMI to the hosts' BMCs: an asyncio client over pyghmi.

pyghmi's ``Command`` is blocking, so every IPMI exchange runs in a thread of the pool's own
executor. Around it, per BMC and lane (power control, and sensor reads apart from it: two
sessions, so a fence never waits behind an SDR read): a slot (``per_bmc`` calls at once,
default 1: one session, whose commands pyghmi serialises anyway), a timeout per attempt,
retries with exponential back-off for ``unreachable``/``timeout`` only (never ``auth``:
retrying wrong credentials locks accounts on real BMCs), and a circuit breaker; in total at
most ``max_total`` calls at once.

Sessions are reused: one ``Command`` (one RMCP+ session, and its SDR cache for sensors) per BMC,
replaced when pyghmi says it is no longer valid, after any failure, or when the credentials
change. A login is five round trips (auth caps, open session, RAKP 1/3, privilege); a command on
a live session is one. Credentials go to pyghmi as bytes: with ``str`` a second ``Command`` for
the same BMC waits forever (pyghmi 1.6.19, see sim/README.md).

Never run this client in a process that also serves simulated BMCs (pyghmi's loop is global).
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
import threading
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any, Literal, TypeVar

from pydantic import BaseModel, Field

from roost_shared.metrics import Metrics
from roost_shared.vault import Vault

log = logging.getLogger(__name__)
T = TypeVar("T")

IPMI_PORT = 623
POWER_ACTIONS = ("on", "off", "cycle", "reset", "softoff")
BOOT_DEVICES = ("network", "hd", "cdrom", "setup", "default")
#: Kinds of failure that say nothing about the credentials and may pass: retried, and counted
#: by the breaker.
TRANSIENT = frozenset({"unreachable", "timeout"})
#: Kinds the breaker counts. ``auth`` too: a BMC refusing our credentials is not hammered with
#: logins every poll (some lock the account). ``error`` (the BMC answered, e.g. "not supported
#: in present state") is a working BMC.
BREAKER_COUNTS = TRANSIENT | {"auth"}

#: Lanes: each has its own slot and session on a BMC (sharing its breaker), so power control
#: never queues behind a sensor read (measured: a fence waited ~0.7 s behind one).
CONTROL, SENSORS = "control", "sensors"

BmcErrorKind = Literal["unreachable", "auth", "timeout", "circuit-open", "error"]
Health = Literal["ok", "warning", "critical", "failed"]


@dataclass(frozen=True)
class BmcTarget:
    """One BMC to call: where, and as whom. The password never shows in reprs or logs."""

    address: str
    port: int
    username: str
    password: bytes = field(repr=False)

    @property
    def key(self) -> str:
        """``address:port``, the BMC's identity in the pool, metrics and logs."""
        return f"{self.address}:{self.port}"

    @property
    def fingerprint(self) -> str:
        """A digest of the credentials: when it changes, the session and breaker start over."""
        return hashlib.sha256(self.username.encode() + b"\0" + self.password).hexdigest()[:16]


class BmcError(Exception):
    """A BMC call that did not succeed; ``kind`` is ``unreachable`` | ``auth`` | ``timeout`` |
    ``circuit-open`` | ``error`` and ``str()`` a one-line reason."""

    def __init__(self, kind: BmcErrorKind, message: str) -> None:
        super().__init__(message)
        self.kind: BmcErrorKind = kind


class SensorReading(BaseModel):
    """One sensor as the BMC reports it (pyghmi's reading, with ``health`` in words)."""

    name: str
    type: str = ""
    value: float | None = None
    units: str = ""
    health: Health = "ok"
    states: list[str] = Field(default_factory=list)
    unavailable: bool = False


def target_of(doc: dict[str, Any], vault: Vault) -> BmcTarget | None:
    """The IPMI BMC of a host document, with its password decrypted (in memory only).

    None when the host has no IPMI BMC (none, Redfish, or not fully configured). Raises
    ``BmcError(kind="auth")`` when the ciphertext cannot be decrypted with this site's key
    (config and host use different keys): the credentials are unusable, as if wrong.
    """
    if doc.get("bmc_type") != "ipmi" or not doc.get("bmc_address"):
        return None
    enc, username = doc.get("bmc_password_enc"), doc.get("bmc_username")
    if not enc or not username:
        return None
    try:
        password = vault.decrypt(enc).encode()
    except ValueError:
        raise BmcError(
            "auth",
            "the BMC password cannot be decrypted with this service's key (ROOST_SECRET_KEY or "
            "config-secret.key must be the config service's)",
        ) from None
    return BmcTarget(
        address=doc["bmc_address"],
        port=int(doc.get("bmc_port") or IPMI_PORT),
        username=username,
        password=password,
    )


def classify(exc: BaseException) -> BmcError:
    """Map what pyghmi raised to a :class:`BmcError` (pyghmi has one exception for all)."""
    if isinstance(exc, BmcError):
        return exc
    text = str(exc.args[0]) if exc.args and exc.args[0] is not None else ""
    lowered = text.lower()
    if any(w in lowered for w in ("password", "unauthorized", "rakp", "privilege", "auth")):
        return BmcError("auth", f"authentication failed: {text}")
    if isinstance(exc, OSError) or not text or "no longer connected" in lowered:
        # pyghmi raises IpmiException(None) when a login gets no answer, and "Session no longer
        # connected" when an established session stops answering.
        return BmcError("unreachable", f"no answer from the BMC{': ' + text if text else ''}")
    if "timeout" in lowered or "timed out" in lowered:
        return BmcError("timeout", text)
    return BmcError("error", text or type(exc).__name__)


def _health(mask: int) -> Health:
    # pyghmi.constants.Health: Ok 0, Warning 1, Critical 2, Failed 4 (a bit mask).
    if mask & 4:
        return "failed"
    if mask & 2:
        return "critical"
    if mask & 1:
        return "warning"
    return "ok"


class _Breaker:
    """Per-BMC circuit breaker: closed → open after N consecutive failures → half-open after
    the reset time (one trial call) → closed on success, open again on failure."""

    def __init__(self, failures: int, reset_s: float) -> None:
        self.limit = failures
        self.reset_s = reset_s
        self.failures = 0
        self.opened_at: float | None = None
        self.trial = False

    def state(self, now: float) -> str:
        if self.opened_at is None:
            return "closed"
        return "half-open" if now - self.opened_at >= self.reset_s else "open"

    def admit(self, now: float) -> bool:
        """Whether a call may go ahead (takes the trial in half-open)."""
        state = self.state(now)
        if state == "closed":
            return True
        if state == "half-open" and not self.trial:
            self.trial = True
            return True
        return False

    def success(self) -> None:
        self.failures, self.opened_at, self.trial = 0, None, False

    def failure(self, now: float) -> bool:
        """Count a failure; True when it opened the breaker."""
        self.failures += 1
        if self.trial or (self.opened_at is None and self.failures >= self.limit):
            self.opened_at, self.trial = now, False
            return True
        return False


@dataclass
class _Bmc:
    """What the pool keeps per BMC."""

    slot: asyncio.Semaphore
    breaker: _Breaker
    fingerprint: str = ""
    command: Any = None  # pyghmi Command with a live session, or None
    lock: threading.Lock = field(default_factory=threading.Lock)


class BmcPool:
    """Bounded, retrying, circuit-broken IPMI calls to many BMCs (see the module docstring)."""

    def __init__(
        self,
        *,
        max_total: int,
        per_bmc: int = 1,
        timeout_s: float,
        retries: int,
        breaker_failures: int,
        breaker_reset_s: float,
        metrics: Metrics | None = None,
    ) -> None:
        self.per_bmc = per_bmc
        self.timeout_s = timeout_s
        self.retries = retries
        self.breaker_failures = breaker_failures
        self.breaker_reset_s = breaker_reset_s
        self._total = asyncio.Semaphore(max_total)
        # Threads hold their slots until pyghmi returns, even after a timeout: at most
        # max_total threads ever exist, so the executor never queues.
        self._executor = ThreadPoolExecutor(max_workers=max_total, thread_name_prefix="bmc")
        # Breaking an abandoned session takes pyghmi's global lock, which the pool's threads
        # hold while they wait on their BMCs: never on the event loop (it froze the whole host
        # service once, at 50 BMCs), always on this thread of its own.
        self._breaker = ThreadPoolExecutor(max_workers=1, thread_name_prefix="bmc-break")
        self._bmcs: dict[str, _Bmc] = {}
        self._calls = self._attempts = self._latency = self._opens = None
        if metrics is not None:
            self._calls = metrics.counter(
                "bmc_calls",
                "BMC calls (after retries) by operation and outcome.",
                ["op", "outcome"],
            )
            self._attempts = metrics.counter(
                "bmc_attempts", "IPMI attempts (each retry counts) by outcome.", ["op", "outcome"]
            )
            self._latency = metrics.histogram(
                "bmc_call_seconds", "BMC call latency, retries included.", ["op"]
            )
            self._opens = metrics.counter("bmc_breaker_opens", "Circuit breakers opened.")

    # Public operations -------------------------------------------------------------------

    async def power_state(self, t: BmcTarget) -> str:
        """``on`` or ``off``."""
        return await self._call(t, "power_state", lambda c: c.get_power()["powerstate"])

    async def set_power(self, t: BmcTarget, state: str) -> str:
        """Request ``on`` | ``off`` | ``cycle`` | ``reset`` | ``softoff``; returns the power
        state the BMC reports right after (a cycle or reset of a powered host reads ``on``)."""
        if state not in POWER_ACTIONS:
            raise ValueError(f"power action must be one of {', '.join(POWER_ACTIONS)}")
        return await self._call(t, f"set_power_{state}", lambda c: _set_power(c, state))

    async def set_boot_device(self, t: BmcTarget, device: str) -> None:
        """The next boot's device: ``network`` | ``hd`` | ``cdrom`` | ``setup`` | ``default``."""
        if device not in BOOT_DEVICES:
            raise ValueError(f"boot device must be one of {', '.join(BOOT_DEVICES)}")

        def work(c: Any) -> None:
            result = c.set_bootdev(device)
            if isinstance(result, dict) and "error" in result:
                raise BmcError("error", str(result["error"]))

        await self._call(t, "set_boot_device", work)

    async def sensors(self, t: BmcTarget) -> list[SensorReading]:
        """Every sensor the BMC's SDR lists, with its reading and health."""

        def work(c: Any) -> list[SensorReading]:
            return [
                SensorReading(
                    name=str(r.name),
                    type=str(r.type or ""),
                    value=None if r.value is None else float(r.value),
                    units=str(r.units or ""),
                    health=_health(int(r.health or 0)),
                    states=[str(s) for s in (r.states or [])],
                    unavailable=bool(r.unavailable),
                )
                for r in c.get_sensor_data()
            ]

        # Its own lane: reading a whole SDR takes a while, and a fence must not wait behind it.
        return await self._call(t, "sensors", work, lane=SENSORS)

    async def power_states(
        self, targets: list[BmcTarget], *, timeout_s: float | None = None
    ) -> dict[str, str | BmcError]:
        """The power state of many BMCs at once, by ``BmcTarget.key``: ``on``/``off`` or the
        :class:`BmcError` of that BMC (``circuit-open`` for BMCs whose breaker is open).

        One pool thread drives every session through pyghmi's own event loop with callbacks:
        logins and commands to all BMCs are in flight together and no thread hop is paid per
        BMC (the per-call path costs ~2 ms of Python each, a thousand of them ~2 s; this one
        reads 1,000 BMCs on warm sessions in ~0.1 s, bench/bmc_poll.py). No retries: a poll
        is repeated anyway; failures count toward each BMC's breaker like single calls."""
        timeout_s = timeout_s or self.timeout_s
        started = time.monotonic()
        results: dict[str, str | BmcError] = {}
        admitted: list[BmcTarget] = []
        for t in targets:
            if self._bmc(t).breaker.admit(started):
                admitted.append(t)
            else:
                results[t.key] = BmcError("circuit-open", f"BMC {t.key} failed repeatedly")
        if admitted:
            await self._total.acquire()
            try:
                loop = asyncio.get_running_loop()
                read = await loop.run_in_executor(
                    self._executor, _read_power_states, admitted, timeout_s
                )
            finally:
                self._total.release()
            results.update(read)
        now = time.monotonic()
        for t in admitted:
            outcome = results[t.key]
            breaker = self._bmc(t).breaker
            if isinstance(outcome, BmcError):
                if outcome.kind in BREAKER_COUNTS and breaker.failure(now) and self._opens:
                    self._opens.inc()
                self._count("power_state_bulk", outcome.kind, started)
            else:
                breaker.success()
                self._count("power_state_bulk", "ok", started)
        return results

    def breaker(self, t: BmcTarget) -> str:
        """``closed`` | ``open`` | ``half-open`` for this BMC."""
        bmc = self._bmcs.get(t.key)
        return bmc.breaker.state(time.monotonic()) if bmc else "closed"

    async def aclose(self) -> None:
        """Stop: no new calls; threads still talking to BMCs end on pyghmi's own timeouts."""
        self._executor.shutdown(wait=False, cancel_futures=True)
        self._breaker.shutdown(wait=False)  # breaks still queued run: no session left retrying

    # Machinery ---------------------------------------------------------------------------

    def _bmc(self, t: BmcTarget, lane: str = CONTROL) -> _Bmc:
        bmc = self._bmcs.get(t.key)
        if bmc is None:
            bmc = _Bmc(asyncio.Semaphore(self.per_bmc), self._new_breaker(), t.fingerprint)
            self._bmcs[t.key] = bmc
        elif bmc.fingerprint != t.fingerprint:
            # New credentials from config: a fresh session, and the breaker forgets the
            # failures of the old ones (an operator fixing a password wants it tried now).
            bmc.fingerprint, bmc.command, bmc.breaker = t.fingerprint, None, self._new_breaker()
        if lane == CONTROL:
            return bmc
        # Another lane: its own slot and session, the same breaker (one BMC's health).
        key = f"{t.key}#{lane}"
        other = self._bmcs.get(key)
        if other is None or other.fingerprint != t.fingerprint:
            other = _Bmc(asyncio.Semaphore(self.per_bmc), bmc.breaker, t.fingerprint)
            self._bmcs[key] = other
        other.breaker = bmc.breaker
        return other

    def _new_breaker(self) -> _Breaker:
        return _Breaker(self.breaker_failures, self.breaker_reset_s)

    async def _call(
        self, t: BmcTarget, op: str, work: Callable[[Any], T], lane: str = CONTROL
    ) -> T:
        from tenacity import (
            AsyncRetrying,
            retry_if_exception,
            stop_after_attempt,
            wait_exponential,
        )

        bmc = self._bmc(t, lane)
        started = time.monotonic()
        if not bmc.breaker.admit(started):
            err = BmcError("circuit-open", f"BMC {t.key} failed repeatedly; calls paused")
            self._count(op, err.kind, started)
            raise err
        trial = bmc.breaker.trial
        try:
            async for attempt in AsyncRetrying(
                retry=retry_if_exception(lambda e: isinstance(e, BmcError) and e.kind in TRANSIENT),
                # A half-open breaker's trial is one attempt: it is a probe, not a cure.
                stop=stop_after_attempt(1 if trial else self.retries + 1),
                wait=wait_exponential(multiplier=0.2, max=2.0),
                reraise=True,
            ):
                with attempt:
                    result = await self._attempt(t, bmc, op, work)
        except BmcError as err:
            if err.kind in BREAKER_COUNTS:
                if bmc.breaker.failure(time.monotonic()) and self._opens is not None:
                    self._opens.inc()
            elif trial:
                bmc.breaker.success()  # it answered: the BMC is back
            self._count(op, err.kind, started)
            raise
        except BaseException:
            if trial:
                bmc.breaker.trial = False  # cancelled: let a later call take the trial
            raise
        bmc.breaker.success()
        self._count(op, "ok", started)
        return result

    async def _attempt(self, t: BmcTarget, bmc: _Bmc, op: str, work: Callable[[Any], T]) -> T:
        loop = asyncio.get_running_loop()
        try:
            # A call still running on this BMC (one that timed out, say) holds its slot; do
            # not queue behind it for longer than one call may take.
            await asyncio.wait_for(bmc.slot.acquire(), self.timeout_s)
        except TimeoutError:
            self._attempted(op, "timeout")
            raise BmcError("timeout", f"BMC {t.key} is still busy with an earlier call") from None
        try:
            await self._total.acquire()
        except BaseException:
            bmc.slot.release()
            raise

        def release(_: object) -> None:
            try:
                loop.call_soon_threadsafe(self._total.release)
                loop.call_soon_threadsafe(bmc.slot.release)
            except RuntimeError:  # the loop is gone (shutdown): nobody waits for the slots
                pass

        future = self._executor.submit(self._run, t, bmc, work)
        future.add_done_callback(release)
        try:
            result = await asyncio.wait_for(asyncio.wrap_future(future), self.timeout_s)
        except TimeoutError:
            await self._abandon(t, bmc)
            self._attempted(op, "timeout")
            raise BmcError(
                "timeout", f"BMC {t.key} did not answer within {self.timeout_s:g}s"
            ) from None
        except BmcError as err:
            self._attempted(op, err.kind)
            raise
        self._attempted(op, "ok")
        return result

    def _run(self, t: BmcTarget, bmc: _Bmc, work: Callable[[Any], T]) -> T:
        """In a pool thread: reuse or open the BMC's session, then do the work."""
        from pyghmi.ipmi.command import Command
        from pyghmi.ipmi.private.session import Session

        try:
            # The lock guards the attribute only, never a login (the event loop takes it too).
            with bmc.lock:
                command = bmc.command
            if command is not None:
                session = command.ipmi_session
                if not (session.logged and Session._is_session_valid(session)):
                    command = None  # keepalive overdue or broken: log in again
            if command is None:
                command = Command(
                    bmc=t.address, port=t.port, userid=t.username.encode(), password=t.password
                )
                with bmc.lock:
                    bmc.command = command
            return work(command)
        except Exception as exc:
            err = classify(exc)
            if err.kind != "error":
                with bmc.lock:
                    bmc.command = None  # the next call starts a new session
            raise err from None

    async def _abandon(self, t: BmcTarget, bmc: _Bmc) -> None:
        """After a timeout: break the BMC's session so the thread waiting on it ends within a
        retransmit period (pyghmi keeps retrying a silent session for up to 30 s and a silent
        login for ~4.5 s), freeing its slot; the next call logs in afresh."""
        from pyghmi.ipmi.private.session import Session

        with bmc.lock:
            command, bmc.command = bmc.command, None
        sessions = [getattr(command, "ipmi_session", None)]
        key = (t.address, t.username.encode(), t.password, t.port, None)
        sessions.append(Session.initting_sessions.get(key))  # a login under way
        breaks = [
            asyncio.wrap_future(self._breaker.submit(_break, session))
            for session in sessions
            if session is not None
        ]
        if breaks:
            # Usually done in microseconds, before the retry; when pyghmi's lock is held long
            # the retry goes on without waiting (the break still happens on its thread).
            await asyncio.wait(breaks, timeout=BREAK_WAIT_S)

    def _attempted(self, op: str, outcome: str) -> None:
        if self._attempts is not None:
            self._attempts.labels(op, outcome).inc()

    def _count(self, op: str, outcome: str, started: float) -> None:
        if self._calls is not None:
            self._calls.labels(op, outcome).inc()
        if self._latency is not None:
            self._latency.labels(op).observe(time.monotonic() - started)


def _break(session: Any) -> None:
    """Mark a pyghmi session broken without a logout exchange (which would queue behind the
    very command that is stuck): its waiting loop sees it is neither logged in nor logging in
    and gives up."""
    try:
        session.logged = 0
        session.logging = False
        session._mark_broken("abandoned after a timeout")
    except Exception:  # best effort: the thread then ends on pyghmi's own timeout
        log.debug("could not break an abandoned IPMI session", exc_info=True)


#: How long a timed-out call waits for its abandoned session to be broken before its retry.
BREAK_WAIT_S = 1.0

#: Logins a bulk read keeps in flight at once.
LOGIN_WINDOW = 128


def _read_power_states(targets: list[BmcTarget], timeout_s: float) -> dict[str, str | BmcError]:
    """In one pool thread: Get Chassis Status from every BMC through pyghmi's callback API.

    Its sessions are its own (see the ``kg`` note below) and stay alive between reads (pyghmi
    keeps them alive), so the next bulk read needs no login. The rule of pyghmi's callback
    API: whoever passes a callback clears ``incommand`` and wakes ``evq``."""
    from pyghmi.ipmi.private.session import Session

    results: dict[str, str | BmcError] = {}
    sessions: dict[str, Any] = {}

    def logged_on(key: str) -> Callable[[Any], None]:
        def done(response: Any) -> None:
            if isinstance(response, dict) and response.get("error"):
                results.setdefault(key, classify(Exception(response["error"])))

        return done

    def answered(key: str, session: Any) -> Callable[[Any], None]:
        def done(response: Any) -> None:
            session.incommand = False
            while session.evq:
                session.evq.popleft().set()
            if not isinstance(response, dict) or response.get("error") or not response.get("data"):
                error = response.get("error") if isinstance(response, dict) else response
                results[key] = classify(Exception(error or "no answer"))
            else:
                results[key] = "on" if response["data"][0] & 1 else "off"

        return done

    waiting = list(reversed(targets))
    unsent: set[str] = set()
    deadline = time.monotonic() + timeout_s
    while len(results) < len(targets) and time.monotonic() < deadline:
        # Logins in flight are bounded: a thousand at once overflow a BMC simulator's (or a
        # management switch's) buffers, and pyghmi retransmits a lost login only after ~1 s.
        logging_in = sum(1 for k in unsent if not sessions[k].logged)
        while waiting and logging_in < LOGIN_WINDOW:
            t = waiting.pop()
            try:
                # kg=password is what the BMC uses when no BMC key is set (IPMI 2.0 K_G
                # defaults to K_UID, and pyghmi does the same with kg=None), so nothing changes
                # on the wire; it keeps these sessions apart from the ones single calls use
                # (pyghmi shares a session per (bmc, user, password, kg)): a session driven
                # synchronously by a Command does not hand callback answers back.
                session = Session(
                    t.address,
                    t.username.encode(),
                    t.password,
                    port=t.port,
                    kg=t.password,
                    onlogon=logged_on(t.key),
                )
            except Exception as exc:
                results[t.key] = classify(exc)
                continue
            sessions[t.key] = session
            unsent.add(t.key)
            logging_in += 0 if session.logged else 1
        for key in list(unsent):
            session = sessions[key]
            if key in results:
                unsent.discard(key)
            elif session.logged and not session._isincommand():
                unsent.discard(key)
                try:
                    session.raw_command(netfn=0, command=1, callback=answered(key, session))
                except Exception as exc:
                    results[key] = classify(exc)
        Session.wait_for_rsp(timeout=0.01)
    for t in targets:
        if t.key not in results:
            kind = "unreachable" if t.key in unsent or t.key not in sessions else "timeout"
            results[t.key] = BmcError(kind, f"BMC {t.key} did not answer within {timeout_s:g}s")
            session = sessions.get(t.key)
            if session is not None and t.key not in unsent:
                _break(session)  # its command is still out: do not leave it "in command"
    return results


def _set_power(command: Any, state: str) -> str:
    """In a pool thread: one chassis control, then read the power state back."""
    if state == "cycle":
        # pyghmi has no name for chassis control 2 (power cycle); send it raw.
        response = command.raw_command(netfn=0, command=2, data=[2])
        if isinstance(response, dict) and response.get("error"):
            raise BmcError("error", f"power cycle refused: {response['error']}")
    else:
        command.set_power(state, wait=False)
    return command.get_power()["powerstate"]


@dataclass
class BmcAccess:
    """What the host service uses to reach BMCs (``app.state.bmc``): the pool, and the vault
    that decrypts the passwords config sends."""

    pool: BmcPool
    vault: Vault

    @classmethod
    def from_settings(cls, settings: Any, metrics: Metrics | None = None) -> BmcAccess:
        """Pool and vault from ``HostSettings`` (``ROOST_BMC_*``, ``ROOST_SECRET_KEY``)."""
        return cls(
            pool=BmcPool(
                max_total=settings.bmc_max_concurrency,
                timeout_s=settings.bmc_timeout_s,
                retries=settings.bmc_retries,
                breaker_failures=settings.bmc_breaker_failures,
                breaker_reset_s=settings.bmc_breaker_reset_s,
                metrics=metrics,
            ),
            vault=Vault.from_settings(settings.secret_key, settings.state_dir),
        )

    def target(self, doc: dict[str, Any]) -> BmcTarget | None:
        """``target_of(doc, vault)``: the host's IPMI BMC, or None; BmcError(auth) if the
        password cannot be decrypted."""
        return target_of(doc, self.vault)

    async def aclose(self) -> None:
        await self.pool.aclose()
