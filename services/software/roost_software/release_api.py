"""Routes of releases, the deployment and hosts' software (``/v1``); thin over
:class:`~roost_software.releases.ReleaseStore` and :class:`~roost_software.deploy.DeployOps`.

Readers read, admins change. The archive download also takes a download ticket instead of a
token: agents get one in their ``software.install`` command and hold no API token.
"""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Depends, FastAPI, HTTPException, Path, Query, Request, Response
from fastapi.responses import FileResponse, JSONResponse

from roost_shared.auth import Principal, current_principal, require_admin, require_reader
from roost_shared.paging import next_if_full
from roost_shared.problems import NotFound, problem_response
from roost_shared.releases import RELEASE_ID_PATTERN
from roost_software.deploy import DeployOps, DeployRefused
from roost_software.release_models import (
    DeploymentView,
    DeployRequest,
    HostDeployView,
    HostSoftwareCollection,
    PrecheckResult,
    ReleaseCollection,
    ReleaseView,
)
from roost_software.releases import ReleaseStore, TooLarge
from roost_software.settings import SoftwareSettings

MAX_LIMIT = 1000
HOSTNAME_PATTERN = r"^[a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?$"

router = APIRouter(prefix="/v1", tags=["releases and deployment"])

Admin = Annotated[Principal, Depends(require_admin)]
Reader = Annotated[Principal, Depends(require_reader)]
ReleaseId = Annotated[str, Path(pattern=RELEASE_ID_PATTERN, description="The release's id.")]
Hostname = Annotated[str, Path(pattern=HOSTNAME_PATTERN, description="The host's name.")]


def _releases(request: Request) -> ReleaseStore:
    return request.app.state.releases


def _deploy(request: Request) -> DeployOps:
    return request.app.state.deploy


def _settings(request: Request) -> SoftwareSettings:
    return request.app.state.settings


Releases = Annotated[ReleaseStore, Depends(_releases)]
Deploy = Annotated[DeployOps, Depends(_deploy)]
Settings = Annotated[SoftwareSettings, Depends(_settings)]


def install_handlers(app: FastAPI) -> None:
    """A deployment refused by its prechecks is a 409 listing each failed check."""

    @app.exception_handler(DeployRefused)
    async def _refused(request: Request, exc: DeployRefused) -> JSONResponse:
        errors = [
            {
                "field": f"precheck.{c.check}" + (f".{c.host}" if c.host else ""),
                "message": c.reason,
            }
            for c in exc.checks
        ]
        return problem_response(409, str(exc), request=request, errors=errors)


# Releases ------------------------------------------------------------------------------------


@router.post(
    "/releases",
    status_code=201,
    response_model=ReleaseView,
    openapi_extra={
        "requestBody": {
            "required": True,
            "description": "A release archive (.tar.gz, see roost software pack).",
            "content": {
                "application/gzip": {"schema": {"type": "string", "format": "binary"}},
                "application/octet-stream": {"schema": {"type": "string", "format": "binary"}},
            },
        }
    },
)
async def upload_release(
    request: Request, _: Admin, releases: Releases, settings: Settings
) -> ReleaseView:
    """Upload a release archive; every check is made before anything is stored."""
    limit = settings.max_release_bytes
    declared = request.headers.get("content-length")
    if declared and declared.isdigit() and int(declared) > limit:
        raise TooLarge(limit=limit)
    spooled = releases.spool_path()
    try:
        size = 0
        with spooled.open("wb") as f:  # streamed to disk, never held whole in memory
            async for chunk in request.stream():
                size += len(chunk)
                if size > limit:
                    raise TooLarge(limit=limit)
                f.write(chunk)
    except BaseException:
        spooled.unlink(missing_ok=True)
        raise
    return ReleaseView.of(await releases.upload_spooled(spooled))


@router.get("/releases", response_model=ReleaseCollection)
async def list_releases(
    request: Request,
    _: Reader,
    releases: Releases,
    marker: str | None = None,
    limit: Annotated[int, Query(ge=1, le=MAX_LIMIT)] = MAX_LIMIT,
) -> ReleaseCollection:
    """Releases by version, ``limit`` + ``marker`` (a release's uuid) paging."""
    docs = await releases.list(marker, limit)
    views = [ReleaseView.of(d) for d in docs]
    return ReleaseCollection(releases=views, next=next_if_full(request, "releases", views, limit))


@router.get("/releases/{id}", response_model=ReleaseView)
async def show_release(id: ReleaseId, _: Reader, releases: Releases) -> ReleaseView:
    return ReleaseView.of(await releases.get(id))


@router.delete("/releases/{id}", status_code=204)
async def delete_release(id: ReleaseId, _: Admin, releases: Releases) -> Response:
    """Delete a release (409 while deploying/deployed or required by another)."""
    await releases.delete(id)
    return Response(status_code=204)


@router.get(
    "/releases/{id}/archive",
    response_class=FileResponse,
    responses={200: {"content": {"application/gzip": {}}}},
)
async def download_archive(
    request: Request,
    id: ReleaseId,
    releases: Releases,
    ticket: Annotated[
        str | None, Query(description="A download ticket (from a software.install command).")
    ] = None,
) -> FileResponse:
    """The release archive, for a valid download ticket or any API token."""
    if not (ticket and releases.check_ticket(id, ticket)):
        has_token = request.headers.get("authorization") or request.headers.get("x-auth-token")
        if ticket and not has_token:
            raise HTTPException(403, "the download ticket is invalid or has expired")
        current_principal(request)  # 401 without a valid token
    await releases.get(id)
    path = releases.archive_path(id)
    if not path.is_file():
        raise NotFound(kind="Archive of release", id=id, field="path.id")
    return FileResponse(path, media_type="application/gzip", filename=f"{id}.tar.gz")


# Deployment ----------------------------------------------------------------------------------


@router.post("/deploy/precheck", response_model=PrecheckResult)
async def precheck(body: DeployRequest, _: Reader, deploy: Deploy) -> PrecheckResult:
    """Every check a deployment of the release must pass (nothing changes)."""
    return await deploy.precheck(body.release, body.hosts)


@router.post("/deploy", status_code=201, response_model=DeploymentView)
async def start_deploy(body: DeployRequest, _: Admin, deploy: Deploy) -> DeploymentView:
    """Start deploying a release to every host it applies to (one deployment at a time)."""
    return await deploy.start(body.release)


@router.get("/deploy", response_model=DeploymentView)
async def show_deploy(_: Reader, deploy: Deploy) -> DeploymentView:
    view = await deploy.current()
    if view is None:
        raise NotFound("No deployment: start one with POST /v1/deploy.")
    return view


@router.delete("/deploy", status_code=204)
async def forget_deploy(_: Admin, deploy: Deploy) -> Response:
    """Forget a finished (or never started) deployment."""
    await deploy.forget()
    return Response(status_code=204)


@router.post("/deploy/hosts/{hostname}", status_code=202, response_model=HostDeployView)
async def deploy_host(hostname: Hostname, _: Admin, deploy: Deploy) -> HostDeployView:
    """Install the release on one locked host."""
    return await deploy.deploy_host(hostname)


@router.post("/deploy/hosts/{hostname}/rollback", status_code=202, response_model=HostDeployView)
async def rollback_host(hostname: Hostname, _: Admin, deploy: Deploy) -> HostDeployView:
    """Run the release's rollback hook on one host."""
    return await deploy.rollback_host(hostname)


@router.get("/hosts", response_model=HostSoftwareCollection)
async def list_hosts(_: Reader, deploy: Deploy) -> HostSoftwareCollection:
    """Every host's running release and version, as its agent last reported."""
    return HostSoftwareCollection(hosts=await deploy.hosts())
