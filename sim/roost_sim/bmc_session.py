"""The RMCP+ side of the BMC simulator: cipher suites, the shared pyghmi I/O loop, faults.

pyghmi's BMC server (``pyghmi.ipmi.private.serversession``) always answers with cipher suite 3
(RAKP-HMAC-SHA1, HMAC-SHA1-96, AES-CBC-128), whatever the client proposed. ipmitool copes
(it picks suite 3 from Get Channel Cipher Suites), but pyghmi's own client proposes suite 17
(RAKP-HMAC-SHA256, HMAC-SHA256-128, AES-CBC-128), ignores the algorithms in the answer, and
then fails to unpack a 20-byte SHA-1 RAKP2 code as a 32-byte SHA-256 one (``struct.error`` in
``_got_rakp2``). :class:`SuiteServerSession` reads the proposal in the Open Session Request,
accepts suite 3 or 17 (whichever the BMC serves) and runs RAKP, the session keys and packet
integrity with the matching hash; anything else is refused with RMCP+ status 0x11 (no cipher
suite match), which makes pyghmi's client fall back from 17 to 3 by itself.

Every simulated BMC is one pyghmi ``IpmiServer`` on its own UDP socket; pyghmi keeps module
globals (one I/O thread selecting on every socket, one packet queue), so all BMCs of a process
are served by ONE thread calling ``Session.wait_for_rsp`` (:class:`ServeLoop`). A consequence:
do not use pyghmi's *client* in a process that serves simulated BMCs (two threads would run
the same global loop); the tests run the client in the test process and the BMCs in a child.

Faults are applied at the socket (:class:`FaultySocket`): drop everything (unreachable), or
send every answer ``slow_ms`` later (from :class:`Delayer`'s thread, so one slow BMC never
holds up the others).

Two fixes to pyghmi's loop for many BMCs (both in this process only): :class:`FaultySocket`
keeps its socket non-blocking (pyghmi's send and receive threads race on ``setblocking`` and
can leave the receive thread blocked in ``recvfrom``), and :func:`install_epoll` makes the I/O
thread read only the sockets that are ready instead of all of them after every wake-up
(1,000 BMCs: pyghmi's client reads every power state in 2.2 s instead of 15 s). Set
``ROOST_BMC_SELECT=1`` to keep pyghmi's own select loop, for comparison.
"""

from __future__ import annotations

import hashlib
import heapq
import hmac
import itertools
import logging
import os
import select
import socket
import struct
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import pyghmi.ipmi.private.serversession as serversession
import pyghmi.ipmi.private.session as ipmisession
from pyghmi.ipmi.private import constants

log = logging.getLogger("roost_sim.bmc")

# IPMI 2.0 table 22-19/22-20: suite id -> (authentication, integrity, confidentiality).
SUITES: dict[int, tuple[int, int, int]] = {
    3: (1, 1, 1),  # RAKP-HMAC-SHA1, HMAC-SHA1-96, AES-CBC-128
    17: (3, 4, 1),  # RAKP-HMAC-SHA256, HMAC-SHA256-128, AES-CBC-128
}
# suite -> (hash for RAKP/SIK/K1/K2, integrity code length in bytes)
SUITE_HASH: dict[int, tuple[Callable[..., Any], int]] = {
    3: (hashlib.sha1, 12),
    17: (hashlib.sha256, 16),
}
DEFAULT_SUITES = (3, 17)

# RMCP+ status codes (IPMI 2.0 table 13-15).
RMCP_OK = 0x00
RMCP_INVALID_SESSION_ID = 0x02
RMCP_UNAUTHORIZED_NAME = 0x0D
RMCP_INVALID_INTEGRITY_CHECK = 0x0F
RMCP_NO_CIPHER_SUITE_MATCH = 0x11


@dataclass
class Faults:
    """What is wrong with one BMC right now (changed from any thread, read by the loop)."""

    unreachable: bool = False  # drop every packet in and out: clients time out
    slow_ms: int = 0  # send every answer this much later
    wrong_password: bool = False  # refuse every login, also with the right password

    def as_dict(self) -> dict[str, Any]:
        return {
            "unreachable": self.unreachable,
            "slow_ms": self.slow_ms,
            "wrong_password": self.wrong_password,
        }


class Delayer:
    """One thread that sends datagrams at a given time (the ``slow`` fault)."""

    def __init__(self) -> None:
        self._heap: list[tuple[float, int, Callable[[], None]]] = []
        self._seq = itertools.count()
        self._cv = threading.Condition()
        self._thread: threading.Thread | None = None

    def call_at(self, when: float, fn: Callable[[], None]) -> None:
        with self._cv:
            heapq.heappush(self._heap, (when, next(self._seq), fn))
            if self._thread is None:
                self._thread = threading.Thread(target=self._run, name="bmc-delayer", daemon=True)
                self._thread.start()
            self._cv.notify()

    def _run(self) -> None:
        while True:
            with self._cv:
                while not self._heap or self._heap[0][0] > time.monotonic():
                    timeout = self._heap[0][0] - time.monotonic() if self._heap else None
                    self._cv.wait(timeout)
                _, _, fn = heapq.heappop(self._heap)
            try:
                fn()
            except OSError:
                pass  # the socket closed meanwhile


DELAYER = Delayer()


class FaultySocket:
    """A BMC's UDP socket as pyghmi's I/O thread sees it, with the BMC's faults applied.

    pyghmi only calls ``fileno`` (select), ``recvfrom``, ``sendto``, ``setblocking`` and
    ``getsockname`` on it. It has no ``fd`` attribute on purpose (pyghmi reads that as eventlet).
    """

    def __init__(self, sock: socket.socket, faults: Faults) -> None:
        sock.setblocking(False)
        self.sock = sock
        self.faults = faults
        self.dropped = 0
        self.last_activity = time.monotonic()

    def fileno(self) -> int:
        return self.sock.fileno()

    def getsockname(self) -> Any:
        return self.sock.getsockname()

    def setblocking(self, flag: bool) -> None:
        """Ignored: the socket stays non-blocking.

        pyghmi's ``_io_sendto`` (loop thread) sets a socket blocking before sending and
        ``_io_recvfrom`` (I/O thread) sets it non-blocking before reading until it is empty.
        The two threads race, and when the send wins the I/O thread's last ``recvfrom``
        blocks: every BMC of the process stalls until that one socket gets another packet
        (seen as ipmitool sessions failing en masse with 1,000 BMCs and 8 clients at once).
        """

    def recvfrom(self, size: int) -> tuple[bytes, Any]:
        while True:  # raises BlockingIOError when drained, which pyghmi expects
            data, addr = self.sock.recvfrom(size)
            if not self.faults.unreachable:
                return data, addr
            self.dropped += 1

    def sendto(self, packet: bytes | bytearray, addr: Any) -> int:
        if self.faults.unreachable:
            self.dropped += 1
            return len(packet)
        delay = self.faults.slow_ms / 1000.0
        if delay > 0:
            data = bytes(packet)
            DELAYER.call_at(time.monotonic() + delay, lambda: self._send(data, addr))
            return len(data)
        return self._send(packet, addr)

    def _send(self, packet: bytes | bytearray, addr: Any) -> int:
        try:
            return self.sock.sendto(packet, addr)
        except BlockingIOError:  # send buffer full: a lost datagram, as UDP may do
            self.dropped += 1
            return 0

    def close(self) -> None:
        self.sock.close()


class EpollSelect:
    """Stands in for the ``select`` module in pyghmi's session module (its I/O thread only).

    pyghmi's I/O thread calls ``select.select(iosockets, ...)``, ignores which sockets are ready
    and then ``recvfrom``s every socket until it would block: with 1,000 BMC sockets that is
    1,000 failing system calls per received packet (measured: 48 s for ipmitool to read 1,000
    power states), and ``select`` itself stops at file descriptor 1024. This keeps one epoll
    set in step with ``iosockets`` and remembers what was ready, and :func:`_graball_ready`
    then reads only those sockets. Same packets, same order per socket.
    """

    def __init__(self) -> None:
        self._epoll = select.epoll()
        self._watched: list[Any] = []
        self._by_fd: dict[int, Any] = {}
        self.ready: list[Any] = []

    def _sync(self, sockets: list[Any]) -> None:
        if sockets == self._watched:  # identity compare per element: cheap
            return
        wanted = {}
        for sock in sockets:
            with _ignore_oserror():
                wanted[sock.fileno()] = sock
        for fd, sock in list(self._by_fd.items()):
            if wanted.get(fd) is not sock:
                with _ignore_oserror():
                    self._epoll.unregister(fd)
                del self._by_fd[fd]
        for fd, sock in wanted.items():
            if fd not in self._by_fd and fd >= 0:
                with _ignore_oserror():
                    self._epoll.register(fd, select.EPOLLIN)
                self._by_fd[fd] = sock
        self._watched = list(sockets)

    def select(self, rlist: list[Any], wlist: Any, xlist: Any, timeout: float | None = None):
        self._sync(rlist)
        events = self._epoll.poll(-1 if timeout is None else max(timeout, 0))
        self.ready = [self._by_fd[fd] for fd, _ in events if fd in self._by_fd]
        return self.ready, [], []


_EPOLL: EpollSelect | None = None
_original_graball = ipmisession._io_graball


def _graball_ready(mysockets: list[Any], iowaiters: Any) -> Any:
    """pyghmi's ``_io_graball`` over the sockets the last select found ready, not all of them.

    A socket closed since then fails its ``recvfrom``, which pyghmi already treats as "empty".
    """
    if _EPOLL is None:
        return _original_graball(mysockets, iowaiters)
    ready, _EPOLL.ready = _EPOLL.ready, []
    return _original_graball(ready, iowaiters)


def install_epoll() -> None:
    """Make pyghmi's I/O thread (in this process) wait with epoll and read only ready sockets."""
    global _EPOLL
    if _EPOLL is None and hasattr(select, "epoll") and not os.environ.get("ROOST_BMC_SELECT"):
        _EPOLL = EpollSelect()
        ipmisession.select = _EPOLL  # the module's only use: select.select in the I/O thread
        ipmisession._io_graball = _graball_ready


_setup_lock = threading.Lock()


def ensure_io() -> None:
    """Start pyghmi's I/O thread with a loopback wake-up socket as ``iosockets[0]``.

    pyghmi wakes its I/O thread by sending a byte to ``iosockets[0]`` at the address ``myself``.
    Left to itself with only IPv4 server sockets it picks ``::ffff:127.0.0.1``, which an AF_INET
    socket cannot send to; so we make the first socket an AF_INET one on 127.0.0.1 and say so.
    """
    with _setup_lock:
        install_epoll()
        if ipmisession.iothread is not None:
            return
        if ipmisession.myself is None:
            ipmisession.myself = "127.0.0.1"
        addrinfo = socket.getaddrinfo("127.0.0.1", 0, socket.AF_INET, socket.SOCK_DGRAM)[0]
        ipmisession.Session._assignsocket(addrinfo)


def wake_io() -> None:
    """Make pyghmi's I/O thread re-read its socket list now (it may sit in select for 300 s)."""
    wake = ipmisession.iosockets[0]
    with _ignore_oserror():
        wake.sendto(b"\x01", (ipmisession.myself, wake.getsockname()[1]))


class _ignore_oserror:
    def __enter__(self) -> None:
        return None

    def __exit__(self, typ: Any, exc: Any, tb: Any) -> bool:
        return typ is not None and issubclass(typ, OSError)


class SuiteServerSession(serversession.ServerSession):
    """A server-side RMCP+ session that serves the cipher suite the client asked for."""

    suite = 3

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        self.k1 = None  # pyghmi's packet check reads it before RAKP3 completes
        self.created = time.monotonic()
        self.last_activity = self.created
        super().__init__(*args, **kwargs)

    # -- Open Session (IPMI 2.0 13.17/13.18) -------------------------------------------------

    def create_open_session_response(self, request: bytearray) -> bytearray:
        clienttag = request[0]
        self.clientsessionid = request[4:8]
        self.managedsessionid = os.urandom(4)
        self.privlevel = 4
        suite = self._pick_suite(request)
        if suite is None:
            self.suite = None
            return bytearray([clienttag, RMCP_NO_CIPHER_SUITE_MATCH, 0, 0]) + self.clientsessionid
        self.suite = suite
        self.currhashlib, self.currhashlen = SUITE_HASH[suite]
        auth, integrity, conf = SUITES[suite]
        return (
            bytearray([clienttag, RMCP_OK, self.privlevel, 0])
            + self.clientsessionid
            + self.managedsessionid
            + bytearray([0, 0, 0, 8, auth, 0, 0, 0])
            + bytearray([1, 0, 0, 8, integrity, 0, 0, 0])
            + bytearray([2, 0, 0, 8, conf, 0, 0, 0])
        )

    def _pick_suite(self, request: bytearray) -> int | None:
        """The served suite matching the proposal; a zero-length payload means 'you choose'."""

        def proposed(offset: int) -> int | None:
            if len(request) < offset + 8 or request[offset + 3] == 0:
                return None  # wildcard
            return request[offset + 4] & 0x3F

        wanted = (proposed(8), proposed(16), proposed(24))
        for suite in self.bmc.cipher_suites:
            algos = SUITES[suite]
            if all(w is None or w == a for w, a in zip(wanted, algos, strict=True)):
                return suite
        return None

    # -- RAKP (IPMI 2.0 13.20-13.23) -------------------------------------------------------

    def _mac(self, key: bytes, data: bytes) -> bytes:
        return hmac.new(key, data, self.currhashlib).digest()

    def _got_rakp1(self, data: bytearray) -> None:
        self.last_activity = time.monotonic()
        if self.suite is None or len(data) < 28:
            return
        clienttag = data[0]
        if bytes(data[4:8]) != bytes(self.managedsessionid):
            self._rakp2_error(clienttag, RMCP_INVALID_SESSION_ID)
            return
        self.Rm = bytes(data[8:24])
        self.rolem = data[24]
        self.maxpriv = self.rolem & 0b1111
        self.username = bytes(data[28 : 28 + data[27]])
        password = self.authdata.get(self.username.decode("utf-8", "replace"))
        if password is None:
            self._rakp2_error(clienttag, RMCP_UNAUTHORIZED_NAME)
            return
        self.kuid = password.encode("utf-8")
        if self.bmc.faults.wrong_password:
            # What a BMC whose password was changed does: it keys RAKP2 with *its* password,
            # and the client, which checks the code, gives up ("RAKP 2 HMAC is invalid").
            self.kuid = b"\x00not-" + self.kuid
        self.kg = self.bmc.kg if self.bmc.kg is not None else self.kuid
        self.uuiddata = self.uuid.bytes
        self.Rc = os.urandom(16)
        hmacdata = (
            bytes(self.clientsessionid)
            + bytes(self.managedsessionid)
            + self.Rm
            + self.Rc
            + self.uuiddata
            + bytes([self.rolem, len(self.username)])
            + self.username
        )
        authcode = self._mac(self.kuid, hmacdata)
        message = (
            bytearray([clienttag, RMCP_OK, 0, 0])
            + self.clientsessionid
            + self.Rc
            + self.uuiddata
            + authcode
        )
        self.send_payload(message, constants.payload_types["rakp2"], retry=False)

    def _rakp2_error(self, clienttag: int, status: int) -> None:
        message = bytearray([clienttag, status, 0, 0]) + self.clientsessionid
        self.send_payload(message, constants.payload_types["rakp2"], retry=False)

    def _got_rakp3(self, data: bytearray) -> None:
        self.last_activity = time.monotonic()
        if not hasattr(self, "Rc") or len(data) < 8:
            return
        clienttag = data[0]
        if data[1] != 0:
            return  # the client did not like our RAKP2
        role_user = bytes([self.rolem, len(self.username)]) + self.username
        expected = self._mac(self.kuid, self.Rc + bytes(self.clientsessionid) + role_user)
        if not hmac.compare_digest(expected, bytes(data[8:])):
            self._send_rakp4_status(clienttag, RMCP_INVALID_INTEGRITY_CHECK)
            return
        self.sik = self._mac(self.kg, self.Rm + self.Rc + role_user)
        self.k1 = self._mac(self.sik, b"\x01" * 20)
        self.k2 = self._mac(self.sik, b"\x02" * 20)
        self.aeskey = self.k2[:16]
        self.localsid = struct.unpack("<I", bytes(self.managedsessionid))[0]
        self.clientpriv = self.maxpriv
        self.ipmicallback = self.handle_client_request
        self._send_rakp4(clienttag, 0)

    def _send_rakp4_status(self, clienttag: int, status: int) -> None:
        message = bytearray([clienttag, status, 0, 0]) + self.clientsessionid
        self.send_payload(message, constants.payload_types["rakp4"], retry=False)

    def _send_rakp4(self, tagvalue: int, statuscode: int) -> None:
        payload = bytearray([tagvalue, statuscode, 0, 0]) + self.clientsessionid
        icv = self._mac(self.sik, self.Rm + bytes(self.managedsessionid) + self.uuiddata)
        payload += icv[: self.currhashlen]
        self.send_payload(payload, constants.payload_types["rakp4"], retry=False)
        # From here on every packet is integrity-protected (K1, this suite's hash) and AES.
        self.confalgo = "aes"
        self.integrityalgo = self.suite
        self.sequencenumber = 1
        self.sessionid = struct.unpack("<I", bytes(self.clientsessionid))[0]

    # -- session life ---------------------------------------------------------------------

    def _handle_ipmi_packet(self, data: bytearray, sockaddr: Any = None, qent: Any = None) -> Any:
        self.last_activity = time.monotonic()
        return super()._handle_ipmi_packet(data, sockaddr=sockaddr, qent=qent)

    def close_server_session(self) -> None:
        forget_session(self)


def forget_session(session: serversession.ServerSession) -> None:
    handlers = ipmisession.Session.bmc_handlers.get(session.sockaddr)
    if handlers is not None and handlers.get(session.bmc.port) is session:
        del handlers[session.bmc.port]
        if not handlers:
            ipmisession.Session.bmc_handlers.pop(session.sockaddr, None)


def cipher_suites_response(suites: tuple[int, ...], list_index: int) -> bytes:
    """Get Channel Cipher Suites data (after the completion code): channel, then 16-byte pages."""
    records = bytearray()
    for suite in suites:
        auth, integrity, conf = SUITES[suite]
        records += bytes([0xC0, suite, auth, 0x40 | integrity, 0x80 | conf])
    return bytes([1]) + bytes(records[16 * list_index : 16 * (list_index + 1)])


class ServeLoop:
    """The one thread per process that runs pyghmi's receive loop for every simulated BMC."""

    IDLE_SESSION_S = 60.0  # IPMI's usual session inactivity timeout

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._users = 0
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self.errors = 0

    def acquire(self) -> None:
        with self._lock:
            self._users += 1
            if self._thread is None:
                ensure_io()
                self._stop.clear()
                self._thread = threading.Thread(target=self._run, name="bmc-loop", daemon=True)
                self._thread.start()

    def release(self) -> None:
        with self._lock:
            self._users -= 1
            if self._users > 0 or self._thread is None:
                return
            self._stop.set()
            thread, self._thread = self._thread, None
        wake_io()
        thread.join(timeout=5)

    def _run(self) -> None:
        next_sweep = time.monotonic() + 10
        while not self._stop.is_set():
            try:
                ipmisession.Session.wait_for_rsp(timeout=0.2)
            except Exception:  # one malformed packet must not stop every BMC
                self.errors += 1
                log.exception("BMC simulator: error while handling a packet")
            if time.monotonic() > next_sweep:
                next_sweep = time.monotonic() + 10
                self._sweep()

    def _sweep(self) -> None:
        """Forget sessions that went quiet (ipmitool killed mid-way, clients that never close)."""
        cutoff = time.monotonic() - self.IDLE_SESSION_S
        for handlers in list(ipmisession.Session.bmc_handlers.values()):
            if not isinstance(handlers, dict):
                continue
            for session in list(handlers.values()):
                if isinstance(session, SuiteServerSession) and session.last_activity < cutoff:
                    forget_session(session)


LOOP = ServeLoop()
