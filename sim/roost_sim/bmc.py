"""Simulated BMCs: IPMI 2.0 over LAN (RMCP+) on 127.0.0.1, one UDP port per simulated host.

Built on pyghmi's BMC server; ``ipmitool -I lanplus`` and pyghmi's own client both talk to it
(cipher suites 3 and 17, see :mod:`roost_sim.bmc_session`). Each :class:`SimBmc` has a user and
password, a power state, a boot device and threshold sensors (:mod:`roost_sim.bmc_sensors`),
and faults you can switch on (unreachable, slow, wrong password).

* In-process (tests, ``make run``)::

      fleet = BmcFleet.create(count=3, first_port=16230, user="admin", password="secret")
      fleet.start()
      fleet[16230].on_power = lambda state: ...   # "on" / "off"
      fleet[16231].set_sensor("CPU Temp", value=93)
      fleet[16232].faults.unreachable = True
      fleet.stop()

  ``on_power(state)`` is called after every power change, with ``"off"`` or ``"on"``; reset
  and power cycle call it with ``"off"`` and then ``"on"``. (The simulated fleet runs its BMCs
  in a child process and follows ``/events`` instead; see ``roost_sim.fleet``.) The hook runs
  in the thread that made the change: the BMC loop thread for IPMI commands, so it must not
  block (hand the work to your own thread or event loop, e.g. ``loop.call_soon_threadsafe``).

* A process of its own::

      python -m roost_sim.bmc serve --count 100 --first-port 16230 --user admin --password secret

  serves N BMCs from one receive loop, plus a small HTTP/JSON control channel on
  127.0.0.1 (``--control-port``, default 16229; see :class:`ControlServer` for the routes)
  through which tests and the fleet change power, sensors and faults and read power events.
  Once ready it prints one JSON line: ``{"bmcs": N, "first_port": P, "control": URL}``.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import signal
import socket
import sys
import threading
import time
import uuid
from collections import deque
from collections.abc import Callable, Iterable, Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from urllib.parse import parse_qs, unquote, urlparse

import pyghmi.ipmi.bmc as pyghmi_bmc
import pyghmi.ipmi.command as ipmicommand
import pyghmi.ipmi.private.session as ipmisession

from roost_sim.bmc_sensors import THRESHOLD_ORDER, Sensor, default_sensors
from roost_sim.bmc_session import (
    DEFAULT_SUITES,
    LOOP,
    SUITES,
    Faults,
    FaultySocket,
    SuiteServerSession,
    cipher_suites_response,
    forget_session,
    wake_io,
)

log = logging.getLogger("roost_sim.bmc")

FIRST_PORT = 16230  # ARCHITECTURE.md: simulated BMCs from 16230 upward
CONTROL_PORT = FIRST_PORT - 1
POWER_ACTIONS = ("on", "off", "cycle", "reset", "soft", "diag")

# IPMI completion codes
CC_OK = 0x00
CC_INVALID_COMMAND = 0xC1
CC_RESERVATION_CANCELLED = 0xC5
CC_NOT_PRESENT = 0xCB
CC_INVALID_FIELD = 0xCC
CC_NOT_IN_PRESENT_STATE = 0xD5

PowerHook = Callable[[str], None]

_sdr_clock_lock = threading.Lock()
_sdr_clock = 0


def _sdr_timestamp() -> int:
    """A strictly increasing 'most recent addition' time: pyghmi's client caches SDRs by it."""
    global _sdr_clock
    with _sdr_clock_lock:
        _sdr_clock = max(_sdr_clock + 1, int(time.time()))
        return _sdr_clock


class SimBmc(pyghmi_bmc.Bmc):
    """One simulated BMC on ``127.0.0.1:port``."""

    def __init__(
        self,
        port: int,
        user: str,
        password: str,
        *,
        name: str | None = None,
        power: str = "on",
        sensors: Iterable[Sensor] | None = None,
        cipher_suites: Iterable[int] = DEFAULT_SUITES,
        on_power: PowerHook | None = None,
    ) -> None:
        # pyghmi's IpmiServer.__init__ binds its own socket; we bind ours (loopback, with
        # faults) and register it the same way, so this replaces that constructor.
        self.port = port
        self.name = name or f"bmc-{port}"
        self.authdata = {user: password}
        self.user = user
        self.kg: bytes | None = None
        self.uuid = uuid.uuid4()
        self.timeout = 60
        self.pktqueue: deque[Any] = deque()
        self.revision = 0
        self.deviceid = 0x20
        self.firmwaremajor = 1
        self.firmwareminor = 0
        self.ipmiversion = 2
        self.additionaldevices = 0x83  # chassis, SDR repository, sensor device
        self.mfgid = 0
        self.prodid = 0x5253  # "RS"
        self.authcap = bytes([0, 1, 0b10000000, 0b00000100, 0b00000010, 0, 0, 0, 0])
        self.cipher_suites = tuple(cipher_suites)
        if not self.cipher_suites or set(self.cipher_suites) - set(SUITES):
            raise ValueError(f"cipher suites must be among {sorted(SUITES)}")
        self.faults = Faults()
        self.on_power = on_power
        self._listeners: list[PowerHook] = []  # BmcFleet's event log
        self.power = power
        self.boot_device = "default"
        self.boot_persistent = False
        self.boot_uefi = False
        self.power_events: list[tuple[float, str]] = []
        self._lock = threading.RLock()
        self._sensors: dict[str, Sensor] = {}
        self._sdr_added = _sdr_timestamp()
        self._reservation = 0
        for sensor in default_sensors() if sensors is None else sensors:
            self.add_sensor(sensor)
        sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        try:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 1 << 20)
            sock.bind(("127.0.0.1", port))
        except OSError:
            sock.close()
            raise
        self.serversocket = FaultySocket(sock, self.faults)
        self._registered = False

    # -- registration with pyghmi's loop --------------------------------------------------

    def _register(self) -> None:
        ipmisession.Session.bmc_handlers[self.serversocket] = {0: self}
        ipmisession.iosockets.append(self.serversocket)
        self._registered = True

    def _unregister(self) -> None:
        if not self._registered:
            return
        self._registered = False
        handlers = ipmisession.Session.bmc_handlers
        handlers.pop(self.serversocket, None)
        for per_client in list(handlers.values()):
            session = per_client.get(self.port) if isinstance(per_client, dict) else None
            if isinstance(session, SuiteServerSession) and session.bmc is self:
                forget_session(session)
        try:
            ipmisession.iosockets.remove(self.serversocket)
        except ValueError:
            pass
        wake_io()
        self.serversocket.close()

    # -- what pyghmi calls -----------------------------------------------------------------

    def sessionless_data(self, data: bytes, sockaddr: Any) -> None:
        # pyghmi's IpmiServer opens a plain ServerSession; ours serves the client's suite.
        data = bytearray(data)
        self._v2_framing = len(data) > 4 and data[4] == 6  # answer in the framing asked in
        if len(data) >= 22 and data[0] == 6 and data[2:4] == b"\xff\x07" and data[4] == 6:
            if data[5] == 16:
                SuiteServerSession(
                    self.authdata,
                    self.kg,
                    sockaddr,
                    self.serversocket,
                    data[16:],
                    self.uuid,
                    bmc=self,
                )
                return
        super().sessionless_data(data, sockaddr)

    def send_cipher_suites(self, myaddr, mylun, clientaddr, clientlun, clientseq, data, sockaddr):
        # Get Channel Cipher Suites (IPMI 1.5 framing, no session): list the suites we serve.
        list_index = data[22] & 0x3F if len(data) > 22 else 0
        body = bytes([myaddr, mylun | clientseq << 2, 0x54, CC_OK])
        body += cipher_suites_response(self.cipher_suites, list_index)
        ipmihdr = bytes([clientaddr, clientlun | (7 << 2)])
        ipmihdr += bytes([ipmisession._checksum(*ipmihdr)])
        message = ipmihdr + body + bytes([ipmisession._checksum(*body)])
        if getattr(self, "_v2_framing", False):  # RMCP+ header: type 0, session 0, seq 0
            header = b"\x06\x00\xff\x07\x06\x00" + bytes(8) + len(message).to_bytes(2, "little")
        else:  # IPMI 1.5 header: no auth, seq 0, session 0
            header = b"\x06\x00\xff\x07\x00" + bytes(8) + bytes([len(message)])
        ipmisession._io_sendto(self.serversocket, header + message, sockaddr)

    def handle_raw_request(self, request: dict[str, Any], session: Any) -> None:
        netfn, command = request["netfn"], request["command"]
        data = bytes(request["data"])
        try:
            handler = self._handlers().get((netfn, command))
            if handler is None:
                if (netfn, command) in ((6, 0x48), (6, 0x49), (6, 2)):
                    return super().handle_raw_request(request, session)
                return session.send_ipmi_response(code=CC_INVALID_COMMAND)
            code, payload = handler(data)
            session.send_ipmi_response(code=code, data=payload)
        except Exception:
            log.exception("BMC %s: error answering netfn %#x cmd %#x", self.port, netfn, command)
            session.send_ipmi_response(code=0xFF)

    def _handlers(self) -> dict[tuple[int, int], Callable[[bytes], tuple[int, list[int]]]]:
        return {
            (0x06, 0x01): self._get_device_id,
            (0x06, 0x37): lambda data: (CC_OK, list(self.uuid.bytes_le)),  # Get System GUID
            (0x00, 0x01): self._get_chassis_status,
            (0x00, 0x02): self._chassis_control,
            (0x00, 0x08): self._set_boot_options,
            (0x00, 0x09): self._get_boot_options,
            (0x04, 0x2D): self._get_sensor_reading,
            (0x04, 0x27): self._get_sensor_thresholds,
            (0x04, 0x26): self._set_sensor_thresholds,
            (0x0A, 0x20): self._get_sdr_repository_info,
            (0x0A, 0x22): self._reserve_sdr_repository,
            (0x0A, 0x23): self._get_sdr,
        }

    # -- App and chassis -------------------------------------------------------------------

    def _get_device_id(self, data: bytes) -> tuple[int, list[int]]:
        return CC_OK, [
            self.deviceid,
            self.revision,  # bit 7 clear: no device SDRs (we have a repository)
            self.firmwaremajor,
            self.firmwareminor,
            self.ipmiversion,
            self.additionaldevices,
            self.mfgid & 0xFF,
            self.mfgid >> 8 & 0xFF,
            self.mfgid >> 16 & 0xFF,
            self.prodid & 0xFF,
            self.prodid >> 8,
        ]

    def get_power_state(self) -> str:
        return self.power

    def _get_chassis_status(self, data: bytes) -> tuple[int, list[int]]:
        # power on bit, restore policy "always off" (00b); no last event; no misc state
        return CC_OK, [1 if self.power == "on" else 0, 0, 0]

    def _chassis_control(self, data: bytes) -> tuple[int, list[int]]:
        if not data or data[0] > 5:
            return CC_INVALID_FIELD, []
        action = {0: "off", 1: "on", 2: "cycle", 3: "reset", 4: "diag", 5: "soft"}[data[0]]
        try:
            self.set_power(action)
        except PowerStateError:
            return CC_NOT_IN_PRESENT_STATE, []
        return CC_OK, []

    def _get_boot_options(self, data: bytes) -> tuple[int, list[int]]:
        if not data or data[0] & 0x7F != 5:
            return 0x80, []  # parameter not supported
        device = ipmicommand.boot_devices.get(self.boot_device, 0)
        flags = 0x80 | (0x40 if self.boot_persistent else 0) | (0x20 if self.boot_uefi else 0)
        return CC_OK, [1, 5, flags, device, 0, 0, 0]

    def _set_boot_options(self, data: bytes) -> tuple[int, list[int]]:
        if not data:
            return CC_INVALID_FIELD, []
        param = data[0] & 0x7F
        if param in (0, 3, 4):  # set-in-progress, acknowledge: nod
            return CC_OK, []
        if param != 5 or len(data) < 3:
            return 0x80, []
        selector = (data[2] >> 2) & 0x0F
        name = ipmicommand.boot_devices.get(selector)
        if name is None:
            return CC_INVALID_FIELD, []
        with self._lock:
            self.boot_device = name
            self.boot_persistent = bool(data[1] & 0x40)
            self.boot_uefi = bool(data[1] & 0x20)
        return CC_OK, []

    # -- sensors and SDR repository --------------------------------------------------------

    def _sensor_by_number(self, number: int) -> Sensor | None:
        for sensor in self._sensors.values():
            if sensor.number == number:
                return sensor
        return None

    def _get_sensor_reading(self, data: bytes) -> tuple[int, list[int]]:
        sensor = self._sensor_by_number(data[0]) if data else None
        if sensor is None:
            return CC_NOT_PRESENT, []
        return CC_OK, sensor.reading()

    def _get_sensor_thresholds(self, data: bytes) -> tuple[int, list[int]]:
        sensor = self._sensor_by_number(data[0]) if data else None
        if sensor is None:
            return CC_NOT_PRESENT, []
        return CC_OK, sensor.threshold_data()

    def _set_sensor_thresholds(self, data: bytes) -> tuple[int, list[int]]:
        sensor = self._sensor_by_number(data[0]) if data else None
        if sensor is None:
            return CC_NOT_PRESENT, []
        if len(data) < 8:
            return CC_INVALID_FIELD, []
        with self._lock:
            sensor.set_raw_thresholds(data[1], list(data[2:8]))
        return CC_OK, []

    def _records(self) -> list[bytes]:
        return [s.sdr(i) for i, s in enumerate(self._sensors.values())]

    def _get_sdr_repository_info(self, data: bytes) -> tuple[int, list[int]]:
        count = len(self._sensors)
        info = bytes([0x51]) + count.to_bytes(2, "little") + b"\x00\x00"
        info += self._sdr_added.to_bytes(4, "little") + b"\x00\x00\x00\x00"
        info += bytes([0x02])  # Reserve SDR Repository supported
        return CC_OK, list(info)

    def _reserve_sdr_repository(self, data: bytes) -> tuple[int, list[int]]:
        with self._lock:
            self._reservation = self._reservation % 0xFFFF + 1
            return CC_OK, list(self._reservation.to_bytes(2, "little"))

    def _get_sdr(self, data: bytes) -> tuple[int, list[int]]:
        if len(data) < 6:
            return CC_INVALID_FIELD, []
        reservation = int.from_bytes(data[0:2], "little")
        record_id = int.from_bytes(data[2:4], "little")
        offset, count = data[4], data[5]
        if offset and reservation != self._reservation:
            return CC_RESERVATION_CANCELLED, []
        records = self._records()
        if record_id == 0xFFFF and records:
            record_id = len(records) - 1
        if record_id >= len(records):
            return CC_NOT_PRESENT, []
        record = records[record_id]
        next_id = record_id + 1 if record_id + 1 < len(records) else 0xFFFF
        chunk = record[offset:] if count == 0xFF else record[offset : offset + count]
        return CC_OK, list(next_id.to_bytes(2, "little") + chunk)

    # -- the API (any thread) --------------------------------------------------------------

    def set_power(self, action: str) -> str:
        """Power ``on``/``off``/``cycle``/``reset``/``soft``/``diag``; returns the new state.

        ``cycle`` and ``reset`` of a host that is off fail with :class:`PowerStateError` (IPMI
        answers "not supported in present state"), as on most BMCs. ``soft`` is an ACPI
        shutdown, here the same as ``off``; ``diag`` (NMI) changes nothing.
        """
        if action not in POWER_ACTIONS:
            raise ValueError(f"unknown power action {action!r}; known: {', '.join(POWER_ACTIONS)}")
        with self._lock:
            before = self.power
            if action in ("cycle", "reset"):
                if before == "off":
                    raise PowerStateError(f"cannot {action} a host that is off")
                changes = ["off", "on"]
            elif action in ("off", "soft"):
                changes = ["off"] if before == "on" else []
            elif action == "on":
                changes = ["on"] if before == "off" else []
            else:
                changes = []
            for state in changes:
                self.power = state
                self.power_events.append((time.time(), state))
                self._notify(state)
            return self.power

    def _notify(self, state: str) -> None:
        hooks = [self.on_power, *self._listeners] if self.on_power else self._listeners
        for hook in hooks:
            try:
                hook(state)
            except Exception:
                log.exception("BMC %s: on_power hook failed", self.port)

    @property
    def sensors(self) -> list[Sensor]:
        return list(self._sensors.values())

    def sensor(self, name: str) -> Sensor:
        try:
            return self._sensors[name]
        except KeyError:
            raise KeyError(f"no sensor {name!r}; known: {', '.join(self._sensors)}") from None

    def add_sensor(self, sensor: Sensor) -> Sensor:
        with self._lock:
            if sensor.name in self._sensors:
                raise ValueError(f"sensor {sensor.name!r} already exists")
            sensor.number = max((s.number for s in self._sensors.values()), default=0) + 1
            self._sensors[sensor.name] = sensor
            self._sdr_added = _sdr_timestamp()
            return sensor

    def set_sensor(
        self,
        name: str,
        *,
        value: float | None = None,
        thresholds: dict[str, float | None] | None = None,
    ) -> Sensor:
        """Change a sensor's value and/or thresholds (a threshold set to None is removed)."""
        with self._lock:
            sensor = self.sensor(name)
            if thresholds:
                unknown = set(thresholds) - set(THRESHOLD_ORDER)
                if unknown:
                    raise ValueError(f"unknown thresholds {sorted(unknown)}")
                for key, limit in thresholds.items():
                    if limit is None:
                        sensor.thresholds.pop(key, None)
                    else:
                        sensor.thresholds[key] = float(limit)
            if value is not None:
                sensor.value = float(value)
            return sensor

    def set_faults(
        self,
        *,
        unreachable: bool | None = None,
        slow_ms: int | None = None,
        wrong_password: bool | None = None,
    ) -> Faults:
        if unreachable is not None:
            self.faults.unreachable = bool(unreachable)
        if slow_ms is not None:
            if slow_ms < 0:
                raise ValueError("slow_ms must be >= 0")
            self.faults.slow_ms = int(slow_ms)
        if wrong_password is not None:
            if wrong_password and not self.faults.wrong_password:
                self._end_sessions()
            self.faults.wrong_password = bool(wrong_password)
        return self.faults

    def _end_sessions(self) -> None:
        """What a BMC whose password changed does to sessions opened with the old one: ends
        them, so a client that kept a session learns of the new password at its next login
        (otherwise "wrong password" would only ever show to new clients)."""
        for handlers in list(ipmisession.Session.bmc_handlers.values()):
            if isinstance(handlers, dict):
                for session in list(handlers.values()):
                    if getattr(session, "bmc", None) is self:
                        forget_session(session)

    def as_dict(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "port": self.port,
            "user": self.user,
            "power": self.power,
            "boot_device": self.boot_device,
            "boot_persistent": self.boot_persistent,
            "cipher_suites": list(self.cipher_suites),
            "faults": self.faults.as_dict(),
            "sensors": [s.as_dict() for s in self.sensors],
        }


class PowerStateError(RuntimeError):
    """The power action makes no sense in the present power state."""


class BmcFleet:
    """Many simulated BMCs in this process, served by one receive loop.

    Add BMCs, :meth:`start`, use them, :meth:`stop` (or use it as a context manager). Power
    changes of every BMC are also kept in :attr:`events` (what the control channel's
    ``/events`` serves) as ``{"seq", "port", "name", "state", "at"}``.
    """

    def __init__(self) -> None:
        self._bmcs: dict[int, SimBmc] = {}
        self._started = False
        self._events: deque[dict[str, Any]] = deque(maxlen=10_000)
        self._seq = 0
        self._events_lock = threading.Lock()
        self.control: ControlServer | None = None
        # What ``POST /bmcs`` gives a BMC added at run time (set by :meth:`create`).
        self.defaults: dict[str, Any] = {"user": "admin", "password": "password"}

    @classmethod
    def create(
        cls,
        count: int,
        first_port: int = FIRST_PORT,
        user: str = "admin",
        password: str = "password",
        **kwargs: Any,
    ) -> BmcFleet:
        fleet = cls()
        fleet.defaults = {"user": user, "password": password, **kwargs}
        try:
            for i in range(count):
                fleet.add(first_port + i, user, password, **kwargs)
        except BaseException:
            fleet.stop()
            raise
        return fleet

    def add(self, port: int, user: str, password: str, **kwargs: Any) -> SimBmc:
        if port in self._bmcs:
            raise ValueError(f"a BMC already serves port {port}")
        bmc = SimBmc(port, user, password, **kwargs)
        self._bmcs[port] = bmc
        bmc._listeners.append(lambda state, bmc=bmc: self._record(bmc, state))
        if self._started:
            bmc._register()
            wake_io()
        return bmc

    def _record(self, bmc: SimBmc, state: str) -> None:
        with self._events_lock:
            self._seq += 1
            self._events.append(
                {
                    "seq": self._seq,
                    "port": bmc.port,
                    "name": bmc.name,
                    "state": state,
                    "at": time.time(),
                }
            )

    def events(self, after: int = 0) -> list[dict[str, Any]]:
        with self._events_lock:
            return [e for e in self._events if e["seq"] > after]

    def __getitem__(self, port: int) -> SimBmc:
        return self._bmcs[port]

    def __iter__(self) -> Iterator[SimBmc]:
        return iter(list(self._bmcs.values()))

    def __len__(self) -> int:
        return len(self._bmcs)

    @property
    def ports(self) -> list[int]:
        return list(self._bmcs)

    def start(self) -> BmcFleet:
        if self._started:
            return self
        LOOP.acquire()
        for bmc in self._bmcs.values():
            bmc._register()
        self._started = True
        wake_io()
        return self

    def serve_control(self, port: int = CONTROL_PORT) -> ControlServer:
        """Start the HTTP control channel on 127.0.0.1:``port`` (0: any free port)."""
        if self.control is None:
            self.control = ControlServer(self, port)
        return self.control

    def stop(self) -> None:
        if self.control is not None:
            self.control.close()
            self.control = None
        for bmc in self._bmcs.values():
            if self._started:
                bmc._unregister()
            else:
                bmc.serversocket.close()
        if self._started:
            self._started = False
            LOOP.release()

    def __enter__(self) -> BmcFleet:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()


class ControlServer:
    """HTTP/JSON on loopback to drive a :class:`BmcFleet` from outside its process.

    ==========================================  =================================================
    ``GET  /bmcs``                              every BMC: power, boot device, faults, sensors
    ``GET  /bmcs/{port}``                       one BMC
    ``POST /bmcs``                              add one: ``{"port": P, "name": N, "power": "off"}``
                                                (the serve command's user, password and suites)
    ``POST /bmcs/{port}/power``                 ``{"action": "on|off|cycle|reset|soft|diag"}``
    ``POST /bmcs/{port}/sensors/{name}``        ``{"value": 91, "thresholds": {"ucr": 90}}``
    ``POST /bmcs/{port}/faults``                ``{"unreachable": true, "slow_ms": 300,
                                                "wrong_password": false}`` (given keys only)
    ``GET  /events?after=SEQ``                  power changes after SEQ:
                                                ``{"events": [...], "last": SEQ}``
    ``GET  /healthz``                           ``{"ok": true, "bmcs": N}``
    ==========================================  =================================================

    ``/bmcs/all/faults`` and ``/bmcs/all/power`` apply to every BMC. Errors answer 400/404/409
    with ``{"error": "..."}``.
    """

    def __init__(self, fleet: BmcFleet, port: int = CONTROL_PORT) -> None:
        self.fleet = fleet
        handler = type("Handler", (_ControlHandler,), {"fleet": fleet})
        self.httpd = ThreadingHTTPServer(("127.0.0.1", port), handler)
        self.httpd.daemon_threads = True
        self.port = self.httpd.server_address[1]
        self.url = f"http://127.0.0.1:{self.port}"
        self._thread = threading.Thread(
            target=self.httpd.serve_forever, kwargs={"poll_interval": 0.2}, daemon=True
        )
        self._thread.start()

    def close(self) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()


class _ControlHandler(BaseHTTPRequestHandler):
    fleet: BmcFleet
    protocol_version = "HTTP/1.1"

    def log_message(self, format: str, *args: Any) -> None:
        log.debug("control: " + format, *args)

    def _reply(self, status: int, body: Any) -> None:
        data = json.dumps(body).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def _body(self) -> dict[str, Any]:
        length = int(self.headers.get("Content-Length") or 0)
        if not length:
            return {}
        body = json.loads(self.rfile.read(length))
        if not isinstance(body, dict):
            raise ValueError("the body must be a JSON object")
        return body

    def _targets(self, key: str) -> list[SimBmc]:
        if key == "all":
            return list(self.fleet)
        try:
            return [self.fleet[int(key)]]
        except (KeyError, ValueError):
            raise LookupError(f"no BMC on port {key}") from None

    def do_GET(self) -> None:
        self._dispatch("GET")

    def do_POST(self) -> None:
        self._dispatch("POST")

    def _dispatch(self, method: str) -> None:
        url = urlparse(self.path)
        parts = [unquote(p) for p in url.path.split("/") if p]
        try:
            body = self._body() if method == "POST" else {}
            status, result = self._route(method, parts, parse_qs(url.query), body)
        except LookupError as e:
            status, result = 404, {"error": str(e).strip("'\"")}
        except PowerStateError as e:
            status, result = 409, {"error": str(e)}
        except (ValueError, TypeError) as e:
            status, result = 400, {"error": str(e)}
        self._reply(status, result)

    def _route(
        self, method: str, parts: list[str], query: dict[str, list[str]], body: dict[str, Any]
    ) -> tuple[int, Any]:
        match method, parts:
            case "GET", ["healthz"]:
                return 200, {"ok": True, "bmcs": len(self.fleet)}
            case "GET", ["events"]:
                after = int(query.get("after", ["0"])[0])
                events = self.fleet.events(after)
                return 200, {"events": events, "last": events[-1]["seq"] if events else after}
            case "GET", ["bmcs"]:
                return 200, [b.as_dict() for b in self.fleet]
            case "GET", ["bmcs", key]:
                return 200, self._targets(key)[0].as_dict()
            case "POST", ["bmcs"]:
                if "port" not in body:
                    raise ValueError("the body needs a port")
                settings = {**self.fleet.defaults, **body}
                port = int(settings.pop("port"))
                try:
                    bmc = self.fleet.add(
                        port, settings.pop("user"), settings.pop("password"), **settings
                    )
                except OSError as e:
                    raise ValueError(f"cannot serve port {port}: {e.strerror}") from None
                return 201, bmc.as_dict()
            case "POST", ["bmcs", key, "power"]:
                targets = self._targets(key)
                for bmc in targets:
                    bmc.set_power(str(body.get("action", "")))
                return 200, [{"port": b.port, "power": b.power} for b in targets]
            case "POST", ["bmcs", key, "faults"]:
                allowed = {"unreachable", "slow_ms", "wrong_password"}
                if set(body) - allowed:
                    raise ValueError(f"unknown faults {sorted(set(body) - allowed)}")
                targets = self._targets(key)
                for bmc in targets:
                    bmc.set_faults(**body)
                return 200, [{"port": b.port, "faults": b.faults.as_dict()} for b in targets]
            case "POST", ["bmcs", key, "sensors", name]:
                bmc = self._targets(key)[0]
                sensor = bmc.set_sensor(
                    name, value=body.get("value"), thresholds=body.get("thresholds")
                )
                return 200, sensor.as_dict()
        return 404, {"error": f"no route {method} /{'/'.join(parts)}"}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m roost_sim.bmc", description=__doc__.split("\n")[0]
    )
    sub = parser.add_subparsers(dest="command", required=True)
    serve = sub.add_parser("serve", help="serve N simulated BMCs from one process")
    serve.add_argument("--count", type=int, default=1)
    serve.add_argument("--first-port", type=int, default=FIRST_PORT)
    serve.add_argument("--user", default="admin")
    serve.add_argument(
        "--password",
        default=os.environ.get("ROOST_SIM_BMC_PASSWORD", "password"),
        help="default: $ROOST_SIM_BMC_PASSWORD, else 'password'",
    )
    serve.add_argument("--power", choices=("on", "off"), default="on", help="initial power state")
    serve.add_argument(
        "--cipher-suites", default="3,17", help="suites served, among 3 and 17 (default 3,17)"
    )
    serve.add_argument(
        "--control-port", type=int, default=CONTROL_PORT, help="HTTP control port (0: any)"
    )
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(message)s")

    suites = tuple(int(s) for s in args.cipher_suites.split(",") if s)
    fleet = BmcFleet.create(
        args.count,
        args.first_port,
        args.user,
        args.password,
        power=args.power,
        cipher_suites=suites,
    )
    stop = threading.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, lambda *_: stop.set())
    try:
        fleet.start()
        control = fleet.serve_control(args.control_port)
        ready = {"bmcs": len(fleet), "first_port": args.first_port, "control": control.url}
        print(json.dumps(ready), flush=True)
        stop.wait()
    finally:
        fleet.stop()
    return 0


if __name__ == "__main__":
    sys.exit(main())
