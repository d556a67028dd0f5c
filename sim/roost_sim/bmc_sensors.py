"""Simulated threshold sensors and the SDR repository that describes them (IPMI 2.0 ch. 33-36, 43).

Every sensor is a threshold-based analog sensor with a linear formula ``y = M * raw * 10^R``
(B = 0), described by a Full Sensor Record (type 01h). A value or threshold set from outside
is stored as the nearest raw byte, so what clients read back is quantised to the sensor's
step (1 degree C, 50 RPM, 0.06 V by default).
"""

from __future__ import annotations

import struct
from dataclasses import dataclass, field
from typing import Any

# threshold name -> bit in the readable/settable mask and in the reading's status byte
THRESHOLD_BITS = {"lnc": 0, "lcr": 1, "lnr": 2, "unc": 3, "ucr": 4, "unr": 5}
# order of the values in Get/Set Sensor Thresholds
THRESHOLD_ORDER = ("lnc", "lcr", "lnr", "unc", "ucr", "unr")


@dataclass(frozen=True)
class Kind:
    sensor_type: int  # IPMI sensor type code (table 42-3)
    unit: int  # base unit code (table 43-15)
    entity: int  # entity id (table 43-13)
    m: int
    r_exp: int


KINDS: dict[str, Kind] = {
    "temperature": Kind(sensor_type=0x01, unit=1, entity=0x03, m=1, r_exp=0),  # degrees C
    "voltage": Kind(sensor_type=0x02, unit=4, entity=0x07, m=6, r_exp=-2),  # Volts
    "fan": Kind(sensor_type=0x04, unit=18, entity=0x1D, m=50, r_exp=0),  # RPM
}


@dataclass
class Sensor:
    """One threshold sensor. ``thresholds`` maps lnr/lcr/lnc/unc/ucr/unr to values (or absent)."""

    name: str
    kind: str
    value: float
    thresholds: dict[str, float] = field(default_factory=dict)
    number: int = 0  # sensor number, given by the BMC

    def __post_init__(self) -> None:
        if self.kind not in KINDS:
            raise ValueError(f"unknown sensor kind {self.kind!r}; known: {', '.join(KINDS)}")
        if len(self.name.encode()) > 16:
            raise ValueError("a sensor name has at most 16 bytes (SDR id string)")
        unknown = set(self.thresholds) - set(THRESHOLD_BITS)
        if unknown:
            raise ValueError(f"unknown thresholds {sorted(unknown)}; known: {THRESHOLD_ORDER}")

    @property
    def spec(self) -> Kind:
        return KINDS[self.kind]

    @property
    def step(self) -> float:
        return self.spec.m * 10.0**self.spec.r_exp

    def raw(self, value: float) -> int:
        return max(0, min(255, round(value / self.step)))

    def real(self, raw: int) -> float:
        return round(raw * self.step, 6)

    @property
    def mask(self) -> int:
        return sum(1 << THRESHOLD_BITS[t] for t in self.thresholds)

    def status_bits(self) -> int:
        """Threshold comparison status (Get Sensor Reading byte 3), on raw values as a BMC does."""
        raw = self.raw(self.value)
        bits = 0
        for name, threshold in self.thresholds.items():
            t = self.raw(threshold)
            if (name[0] == "l" and raw <= t) or (name[0] == "u" and raw >= t):
                bits |= 1 << THRESHOLD_BITS[name]
        return bits

    def status(self) -> str:
        """ipmitool's words: ok, nc, cr, nr."""
        bits = self.status_bits()
        for word, names in (("nr", ("unr", "lnr")), ("cr", ("ucr", "lcr")), ("nc", ("unc", "lnc"))):
            if any(bits & (1 << THRESHOLD_BITS[n]) for n in names):
                return word
        return "ok"

    # -- IPMI encodings --------------------------------------------------------------------

    def reading(self) -> list[int]:
        """Get Sensor Reading: raw value; events and scanning enabled; threshold status."""
        return [self.raw(self.value), 0xC0, self.status_bits() | 0xC0]

    def threshold_data(self) -> list[int]:
        """Get Sensor Thresholds: readable mask, then lnc lcr lnr unc ucr unr (raw)."""
        raws = [
            self.raw(self.thresholds[t]) if t in self.thresholds else 0 for t in THRESHOLD_ORDER
        ]
        return [self.mask, *raws]

    def set_raw_thresholds(self, mask: int, raws: list[int]) -> None:
        """Set Sensor Thresholds as sent by a client: only the masked ones change."""
        for name, raw in zip(THRESHOLD_ORDER, raws, strict=False):
            if mask & (1 << THRESHOLD_BITS[name]):
                self.thresholds[name] = self.real(raw)

    def sdr(self, record_id: int) -> bytes:
        """The Full Sensor Record (IPMI 2.0 table 43-1)."""
        k = self.spec
        name = self.name.encode()
        raws = {t: self.raw(v) for t, v in self.thresholds.items()}
        body = bytes(
            [
                0x20,  # sensor owner: the BMC
                0x00,  # owner LUN
                self.number,
                k.entity,
                0x01,  # entity instance
                0x7F,  # initialisation: scanning, events, thresholds, hysteresis, type
                0x68,  # capabilities: auto re-arm, hysteresis and thresholds readable+settable
                k.sensor_type,
                0x01,  # event/reading type: threshold
            ]
        )
        body += struct.pack("<HHBB", 0, 0, self.mask, self.mask)  # event masks, read/set masks
        body += bytes(
            [
                0x00,  # units 1: unsigned, no rate, no modifier
                k.unit,
                0x00,  # modifier unit
                0x00,  # linearization: linear
                k.m & 0xFF,
                (k.m >> 8 & 0x03) << 6,  # M high bits, tolerance 0
                0x00,  # B
                0x00,  # B high bits, accuracy
                0x00,  # accuracy, direction
                (k.r_exp & 0x0F) << 4,  # R exponent, B exponent 0
                0x00,  # analog characteristics: no nominal/normal values
                0x00,
                0x00,
                0x00,
                0xFF,  # sensor maximum reading
                0x00,  # sensor minimum reading
                raws.get("unr", 0),
                raws.get("ucr", 0),
                raws.get("unc", 0),
                raws.get("lnr", 0),
                raws.get("lcr", 0),
                raws.get("lnc", 0),
                0x00,  # positive hysteresis
                0x00,  # negative hysteresis
                0x00,
                0x00,  # reserved
                0x00,  # OEM
                0xC0 | len(name),  # id string: 8-bit ASCII + Latin-1
            ]
        )
        body += name
        return struct.pack("<HBBB", record_id, 0x51, 0x01, len(body)) + body

    def as_dict(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "kind": self.kind,
            "number": self.number,
            "value": self.real(self.raw(self.value)),
            "thresholds": {t: self.real(self.raw(v)) for t, v in self.thresholds.items()},
            "status": self.status(),
        }


def default_sensors() -> list[Sensor]:
    """A small server's sensors: two temperatures, a fan and two voltage rails."""
    return [
        Sensor("CPU Temp", "temperature", 45, {"unc": 80, "ucr": 90, "unr": 95}),
        Sensor("Inlet Temp", "temperature", 24, {"unc": 40, "ucr": 45, "unr": 50}),
        Sensor("FAN1", "fan", 4800, {"lnc": 1000, "lcr": 500, "lnr": 250}),
        Sensor("12V", "voltage", 12.0, {"lcr": 10.8, "lnc": 11.4, "unc": 12.6, "ucr": 13.2}),
        Sensor("3.3V", "voltage", 3.3, {"lcr": 3.0, "lnc": 3.12, "unc": 3.48, "ucr": 3.6}),
    ]
