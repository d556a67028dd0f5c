"""Hardware inventory: read from the node (/proc, /sys) or from a JSON profile (simulation).

Reading is synchronous and cheap (a few hundred small files at most); the agent runs it in a
thread so a slow sysfs never stalls the event loop.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any

from roost_shared.catalog import (
    CpuInventory,
    DiskInventory,
    InventoryReported,
    PciInventory,
    PortInventory,
)

PROFILE_KEYS = ("cpu", "memory_mb", "disks", "ports", "pci")
#: Block devices that are not disks.
VIRTUAL_DISK_PREFIXES = ("loop", "ram", "zram", "dm-", "md", "sr", "nbd")


def read_inventory(
    mgmt_mac: str, profile: Path | None, root: Path = Path("/")
) -> InventoryReported:
    """The inventory of this node, or the one a profile describes."""
    if profile is not None:
        return from_profile(mgmt_mac, json.loads(profile.read_text()))
    return InventoryReported(
        mgmt_mac=mgmt_mac,
        cpu=read_cpu(root / "proc/cpuinfo"),
        memory_mb=read_memory_mb(root / "proc/meminfo"),
        disks=read_disks(root / "sys/block"),
        ports=read_ports(root / "sys/class/net"),
        pci=read_pci(root / "sys/bus/pci/devices"),
    )


def from_profile(mgmt_mac: str, profile: dict[str, Any]) -> InventoryReported:
    """A profile is an inventory without the MAC (other keys, like ``description``, are ignored)."""
    return InventoryReported.model_validate(
        {"mgmt_mac": mgmt_mac, **{k: profile[k] for k in PROFILE_KEYS if k in profile}}
    )


def digest(inventory: InventoryReported) -> str:
    """A fingerprint: the agent re-reports only when it changes."""
    return hashlib.sha256(inventory.model_dump_json().encode()).hexdigest()


def read_cpu(path: Path) -> CpuInventory:
    model, threads = "", 0
    sockets: set[str] = set()
    cores: set[tuple[str, str]] = set()
    physical = core = ""
    for line in [*_text(path).splitlines(), ""]:
        key, _, value = line.partition(":")
        key, value = key.strip(), value.strip()
        if key == "processor":
            threads += 1
        elif key == "model name" and not model:
            model = value
        elif key == "physical id":
            physical = value
        elif key == "core id":
            core = value
        elif not key:  # a blank line ends one logical CPU's block
            if physical or core:
                sockets.add(physical)
                cores.add((physical, core))
            physical = core = ""
    return CpuInventory(
        model=model,
        sockets=len(sockets) or (1 if threads else 0),
        cores=len(cores) or threads,
        threads=threads,
    )


def read_memory_mb(path: Path) -> int:
    for line in _text(path).splitlines():
        if line.startswith("MemTotal:"):
            return int(line.split()[1]) // 1024
    return 0


def read_disks(block: Path) -> list[DiskInventory]:
    disks = []
    for dev in sorted(block.glob("*")):
        if dev.name.startswith(VIRTUAL_DISK_PREFIXES):
            continue
        sectors = _int(dev / "size")
        if not sectors:
            continue
        if dev.name.startswith("nvme"):
            kind = "nvme"
        else:
            kind = {"0": "ssd", "1": "hdd"}.get(_text(dev / "queue/rotational").strip(), "unknown")
        disks.append(
            DiskInventory(device=dev.name, size_gb=round(sectors * 512 / 1e9, 1), type=kind)
        )
    return disks


def read_ports(net: Path) -> list[PortInventory]:
    ports = []
    for iface in sorted(net.glob("*")):
        if iface.name == "lo" or not (iface / "address").exists():
            continue
        mac = _text(iface / "address").strip().lower() or None
        speed = _int(iface / "speed")  # EINVAL while the link is down
        ports.append(
            PortInventory(
                name=iface.name,
                mac=mac if mac != "00:00:00:00:00:00" else None,
                speed_mbps=speed if speed and speed > 0 else None,
                link=_text(iface / "carrier").strip() == "1",
            )
        )
    return ports


def read_pci(devices: Path) -> list[PciInventory]:
    return [
        PciInventory(
            address=dev.name,
            vendor=_text(dev / "vendor").strip(),
            device=_text(dev / "device").strip(),
            pclass=_text(dev / "class").strip(),
        )
        for dev in sorted(devices.glob("*"))
    ]


def _text(path: Path) -> str:
    try:
        return path.read_text()
    except OSError:
        return ""


def _int(path: Path) -> int | None:
    try:
        return int(_text(path).strip())
    except ValueError:
        return None
