"""API schemas of releases, the deployment and hosts' reported software (``/v1``)."""

from __future__ import annotations

from datetime import datetime
from typing import Any

from pydantic import BaseModel, ConfigDict, Field

from roost_shared.releases import RELEASE_ID_PATTERN

#: Release states (README): the deployable one, the one deploying, the deployed one, one
#: being rolled back, and one superseded by (at or below) the deployed version.
RELEASE_STATES = ("available", "deploying", "deployed", "removing", "unavailable")
#: A host's state in the current deployment; the agent's own words are ``agent_state``.
HOST_DEPLOY_STATES = ("pending", "installing", "installed", "failed")
#: Deployment states: hosts still to install, or every host runs the release.
DEPLOYMENT_STATES = ("deploying", "deployed")


def _pick(model: type[BaseModel], doc: dict[str, Any]) -> dict[str, Any]:
    return {k: doc[k] for k in model.model_fields if k in doc}


class HooksView(BaseModel):
    install: str | None = None
    activate: str | None = None
    rollback: str | None = None


class ReleaseView(BaseModel):
    """An uploaded release: its signed metadata and where it stands."""

    id: str
    uuid: str
    version: str
    state: str = Field(description=", ".join(RELEASE_STATES))
    summary: str = ""
    description: str = ""
    requires: list[str] = []
    reboot_required: bool = False
    applies_to: list[str] = []
    hooks: HooksView = HooksView()
    files: dict[str, str] = Field(default_factory=dict, description="sha256 of every file.")
    archive_sha256: str
    size: int = Field(description="Archive size in bytes.")
    signed_by: str | None = Field(None, description="The site key that signed it (base64).")
    uploaded_at: datetime
    updated_at: datetime
    deployed_at: datetime | None = None

    @classmethod
    def of(cls, doc: dict[str, Any]) -> ReleaseView:
        return cls.model_validate(_pick(cls, doc))


class ReleaseCollection(BaseModel):
    releases: list[ReleaseView]
    next: str | None = None


class DeployRequest(BaseModel):
    """``POST /v1/deploy`` and ``POST /v1/deploy/precheck``."""

    model_config = ConfigDict(extra="forbid", str_strip_whitespace=True)

    release: str = Field(pattern=RELEASE_ID_PATTERN, description="The release's id.")
    hosts: list[str] | None = Field(
        None, description="Precheck only: limit the per-host checks to these hosts."
    )


class CheckResult(BaseModel):
    check: str = Field(
        description="release-state, dependencies, version, reachable, alarms or disk"
    )
    host: str | None = Field(None, description="The host, for per-host checks.")
    ok: bool
    reason: str = ""


class PrecheckResult(BaseModel):
    release: str
    ok: bool
    checks: list[CheckResult]

    @property
    def failed(self) -> list[CheckResult]:
        return [c for c in self.checks if not c.ok]


class HostDeployView(BaseModel):
    """One host in the current deployment."""

    hostname: str
    personality: str | None = None
    mgmt_mac: str | None = None
    state: str = Field(description=", ".join(HOST_DEPLOY_STATES))
    agent_state: str | None = Field(None, description="The agent's last reported step.")
    running_version: str | None = None
    pending_reboot: bool = False
    rolling_back: bool = False
    reason: str = ""
    command: str | None = Field(None, description="Id of the last command sent to the host.")
    updated_at: datetime | None = None

    @classmethod
    def of(cls, doc: dict[str, Any]) -> HostDeployView:
        return cls.model_validate(_pick(cls, doc))


class DeploymentView(BaseModel):
    """The deployment of one release across the hosts it applies to."""

    uuid: str
    release: str
    version: str
    state: str = Field(description=", ".join(DEPLOYMENT_STATES))
    hosts: list[HostDeployView]
    started_at: datetime
    updated_at: datetime

    @classmethod
    def of(cls, doc: dict[str, Any]) -> DeploymentView:
        hosts = [HostDeployView.of(h) for _, h in sorted(doc.get("hosts", {}).items())]
        return cls.model_validate({**_pick(cls, doc), "release": doc["release_id"], "hosts": hosts})


class HostSoftwareView(BaseModel):
    """What a host's agent last reported about its software."""

    hostname: str | None
    mgmt_mac: str
    running_release: str | None = None
    running_version: str
    release_id: str | None = None
    agent_state: str
    pending_reboot: bool = False
    error: str | None = None
    boot_id: str
    disk_free_mb: int
    time: datetime

    @classmethod
    def of(cls, doc: dict[str, Any]) -> HostSoftwareView:
        return cls.model_validate(_pick(cls, doc))


class HostSoftwareCollection(BaseModel):
    hosts: list[HostSoftwareView]
