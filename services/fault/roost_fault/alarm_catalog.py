"""Alarm ids Roost knows in advance (StarlingX's families, fm-doc events.yaml), seeded into the
suppression table at start-up so operators can suppress an id before it is ever raised.
Ids not listed here get an entry the first time they are raised or logged.
"""

KNOWN_ALARMS: dict[str, str] = {
    "100.101": "Platform CPU threshold exceeded",
    "100.103": "Memory threshold exceeded",
    "100.104": "File system threshold exceeded",
    "100.106": "OAM port failed",
    "100.108": "Management port failed",
    "100.109": "Management interface failed",
    "100.110": "Cluster-host port failed",
    "100.114": "NTP configuration or server problem",
    "100.118": "Remote logging connectivity problem",
    "200.001": "Host was administratively locked",
    "200.003": "Host pxeboot network communication failure",
    "200.004": "Host experienced a service-affecting failure; auto-recovery by reboot",
    "200.005": "Host management network heartbeat lost",
    "200.006": "Host process monitor failure",
    "200.007": "Host sensor alarm",
    # StarlingX's second heartbeat network is cluster-host; Roost's second path is the bus.
    "200.009": "Host bus (second path) heartbeat lost",
    "200.010": "Host BMC access failure",
    "200.011": "Host configuration failure",
    # Not in StarlingX (its mtce only logs MNFA): Roost raises one alarm for the whole group.
    "200.030": "Multi-node failure avoidance: many hosts lost heartbeat together",
    "250.001": "Host configuration is out-of-date",
    "250.003": "Kubernetes certificate rotation failed",
    "250.004": "IPsec certificate renewal failed",
    # Not in StarlingX: two hosts announce the same hostname (raised by the config service).
    "250.010": "Host name conflict",
    # Not in StarlingX: a host's agent refused forged commands (raised by the config service).
    "250.011": "Host refused forged commands",
    # Not in StarlingX: a host reports a configuration version it was never sent.
    "250.012": "Host configuration version ahead of the control plane",
    "400.001": "Service group failure or degraded",
    "400.002": "Service group loss of redundancy",
    "400.003": "License key problem",
    "400.005": "Communication failure with peer over a network",
    "900.001": "Software patching in progress",
    "900.002": "Software patch install failed",
    "900.004": "Host version mismatch",
    "900.005": "Upgrade in progress",
    "900.007": "Kubernetes upgrade in progress",
    "900.021": "Software deploy host failed",
    "900.023": "Software deploy in progress",
    "900.101": "Software update auto-apply in progress",
    "900.103": "Software update auto-apply failed",
}
