"""Reading a node's inventory from /proc and /sys (fixture trees, then this very machine)."""

from __future__ import annotations

from pathlib import Path

from roost_agent.inventory import digest, read_inventory
from roost_agent.settings import AgentSettings

CPUINFO = "".join(
    f"processor\t: {n}\nmodel name\t: Test CPU 9000\n"
    f"physical id\t: {n // 4}\ncore id\t\t: {n % 4 // 2}\n\n"
    for n in range(8)
)  # 2 sockets x 2 cores x 2 threads


def _tree(root: Path) -> Path:
    def put(rel: str, text: str) -> None:
        path = root / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text)

    put("proc/cpuinfo", CPUINFO)
    put("proc/meminfo", "MemTotal:       16384000 kB\nMemFree:         1000 kB\n")
    put("sys/block/nvme0n1/size", "1953525168\n")
    put("sys/block/nvme0n1/queue/rotational", "0\n")
    put("sys/block/sda/size", "976773168\n")
    put("sys/block/sda/queue/rotational", "1\n")
    put("sys/block/loop0/size", "100\n")
    put("sys/class/net/lo/address", "00:00:00:00:00:00\n")
    put("sys/class/net/eno1/address", "3C:FD:FE:00:00:01\n")
    put("sys/class/net/eno1/speed", "10000\n")
    put("sys/class/net/eno1/carrier", "1\n")
    put("sys/class/net/eno2/address", "3c:fd:fe:00:00:02\n")
    put("sys/class/net/eno2/speed", "-1\n")
    put("sys/bus/pci/devices/0000:3b:00.0/vendor", "0x8086\n")
    put("sys/bus/pci/devices/0000:3b:00.0/device", "0x158b\n")
    put("sys/bus/pci/devices/0000:3b:00.0/class", "0x020000\n")
    return root


def test_reads_a_node_tree(tmp_path):
    inv = read_inventory("02:00:00:00:00:01", None, root=_tree(tmp_path))
    assert (inv.cpu.model, inv.cpu.sockets, inv.cpu.cores, inv.cpu.threads) == (
        "Test CPU 9000",
        2,
        4,
        8,
    )
    assert inv.memory_mb == 16000
    assert [(d.device, d.type, d.size_gb) for d in inv.disks] == [
        ("nvme0n1", "nvme", 1000.2),
        ("sda", "hdd", 500.1),
    ]
    assert [(p.name, p.mac, p.speed_mbps, p.link) for p in inv.ports] == [
        ("eno1", "3c:fd:fe:00:00:01", 10000, True),
        ("eno2", "3c:fd:fe:00:00:02", None, False),
    ]
    assert inv.pci[0].address == "0000:3b:00.0" and inv.pci[0].pclass == "0x020000"
    assert digest(inv) == digest(read_inventory("02:00:00:00:00:01", None, root=tmp_path))


def test_reads_this_machine():
    settings = AgentSettings()
    inv = read_inventory(settings.mgmt_mac, None)
    assert inv.cpu.threads >= 1 and inv.memory_mb > 0
    assert settings.mgmt_mac in {p.mac for p in inv.ports}
