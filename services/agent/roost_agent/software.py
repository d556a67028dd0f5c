"""Software updates on this host: ``software.install`` and ``software.rollback`` (issue 7).

The software service sends a release to install (where to download its archive, the archive's
sha256, the sha256 of every file from the signed metadata, the hooks, whether it needs a
reboot); the agent downloads, verifies, extracts, runs the release's hooks and reports every
step as ``agent.software.reported``.

The agent does not take the command's word for what it runs. Before any request it refuses an
install when no release signing key is provisioned on the node (:mod:`roost_agent.release_keys`)
or when the URL is not the software service's (:mod:`roost_agent.download`); it streams the
archive to disk (never whole in memory) and checks the command's archive sha256, unpacks it to
a staging directory hashing every file, and checks the Ed25519 signature of the metadata
against the node's keys, every file against the digests of that signed metadata, and that the
command's release, files and hooks are the signed ones. Only then is the release put in place
and a hook run. Each refusal is logged, counted (``roost_agent_software_refusals_total`` by
reason) and reported as a failed install saying why.

Nothing is ever half-applied silently: every action in progress is written down first
(``software/journal.json``), so an agent that dies or a node that reboots finds it at the next
start and finishes it (after the reboot it asked for) or rolls it back and says so.

Layout under ``<state_dir>/software/`` (every file written atomically)::

    running.json              {"running_release", "running_version", "history": [{"release",
                              "version"}, ...]} -- what the host runs, and what it ran before
                              (the last entry is what a rollback goes back to)
    journal.json              the action in progress: {"action", "command", "correlationid",
                              "release_id", "version", "phase", "previous", "boot_id",
                              "reboot_required", "hooks"}; absent when nothing is in progress
    releases/<id>/            the extracted release (hooks keep their executable bit) and its
                              metadata.json
    releases/<id>.json        what the install command said about it (version, hooks), for a
                              later rollback
    downloads/                the archive being downloaded and checked (removed once unpacked,
                              on any failure, and at every start)

A reboot is the node's (``ROOST_REBOOT_COMMAND``, e.g. ``systemctl reboot``); without one
(simulation, containers) the agent stops as on SIGTERM and exits with :data:`REBOOT_EXIT_CODE`
so that its supervisor starts it again -- a simulated host gets a new boot id per process.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import os
import re
import shutil
import signal
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from typing import Any

from roost_agent.download import DownloadFailed, Refused, Sources, download
from roost_agent.state import write_atomic
from roost_shared.catalog import SoftwareInstall, SoftwareReported, SoftwareRollback
from roost_shared.events import utcnow

# http.client, tarfile, roost_shared.releases and roost_shared.signing (PyNaCl) are imported
# when a release is installed: together they cost an idle agent a few MB of its 40 MB budget.

log = logging.getLogger(__name__)

#: The agent's exit code after a simulated reboot (no ``ROOST_REBOOT_COMMAND``): "start me
#: again" (EX_TEMPFAIL). The simulated fleet restarts it at once, outside its crash-loop guard.
REBOOT_EXIT_CODE = 75
#: An install or activation the agent died in the middle of (the process, not the node).
INTERRUPTIBLE = ("downloading", "installing", "activating", "rolling-back")
DOWNLOAD_TIMEOUT_S = 60.0  # per socket operation, not for the whole download
ERROR_MAX = 2000  # SoftwareReported.error
STDERR_TAIL = 1500
# What a hook inherits from the agent's environment (not the agent's ROOST_* settings).
INHERITED_ENV = ("PATH", "LANG", "LC_ALL", "TZ", "HOME")

Emit = Callable[[SoftwareReported, "str | None"], None]
Reboot = Callable[[], Awaitable[None]]
#: Counts a refused install by its reason (a label of roost_agent_software_refusals_total).
CountRefusal = Callable[[str], None]


class RebootFailed(RuntimeError):
    """The node's reboot command could not be run or failed."""


class _Refused(Exception):
    """A step that failed before anything on the host changed (download, verification);
    ``reason`` is what it is counted as."""

    def __init__(self, reason: str, message: str) -> None:
        super().__init__(message)
        self.reason = reason


@dataclass(frozen=True, slots=True)
class Trust:
    """What this host trusts releases from: where it downloads them, the keys their metadata
    must be signed by, and how large an archive may be."""

    sources: Sources
    keys_file: Path | None
    public_keys: tuple[str, ...]
    max_archive_bytes: int

    def keys(self) -> list[str]:
        """The site's keys (read now); :class:`_Refused` when there is none."""
        from roost_agent.release_keys import NoReleaseKeys, site_release_keys

        try:
            return site_release_keys(self.keys_file, self.public_keys)
        except NoReleaseKeys as exc:
            raise _Refused("no-keys", f"{exc}: nothing is installed") from None


@dataclass(frozen=True, slots=True)
class Ctx:
    """The command an action answers (its reports name it)."""

    id: str
    correlationid: str | None


def _tail(text: str, n: int = STDERR_TAIL) -> str:
    return text.strip()[-n:]


class SoftwareManager:
    """Installs and rolls back releases on this host, one action at a time, in its own task
    (instance and config commands go on being handled meanwhile)."""

    def __init__(
        self,
        *,
        mgmt_mac: str,
        hostname: str,
        state_dir: Path,
        boot_id: str,
        base_version: str,
        hook_timeout_s: float,
        emit: Emit,
        reboot: Reboot,
        trust: Trust,
        count_refusal: CountRefusal,
    ) -> None:
        self.mgmt_mac = mgmt_mac
        self.hostname = hostname
        self.state_dir = state_dir
        self.boot_id = boot_id
        self.base_version = base_version
        self.hook_timeout_s = hook_timeout_s
        self._emit = emit
        self._reboot = reboot
        self.trust = trust
        self._count_refusal = count_refusal
        self.dir = state_dir / "software"
        self.releases = self.dir / "releases"
        self.downloads = self.dir / "downloads"
        self.running_path = self.dir / "running.json"
        self.journal_path = self.dir / "journal.json"
        self.running = self._load_running()
        self._task: asyncio.Task[None] | None = None
        self._action: tuple[str, str | None] | None = None  # (release_id, version) in progress
        self._child_setup: Callable[[], None] | None = None
        self.going_down = False  # a reboot was started: no more actions in this boot
        # What the last report said (re-reported at every announce).
        self.state = "idle"
        self.release_id: str | None = None
        self.error: str | None = None
        self.command: str | None = None
        self.correlationid: str | None = None
        self.pending_reboot = False
        journal = self._load_journal()
        if journal is not None:  # resumed by resume(); until then, that is where it is
            self.state = journal["phase"]
            self.release_id = journal["release_id"]
            self.command = journal.get("command")
            self.correlationid = journal.get("correlationid")
            self.pending_reboot = journal["phase"] == "rebooting"

    # Files -----------------------------------------------------------------------------------

    def _load_running(self) -> dict[str, Any]:
        try:
            doc = json.loads(self.running_path.read_text())
            return {
                "running_release": doc.get("running_release"),
                "running_version": doc.get("running_version") or self.base_version,
                "history": list(doc.get("history") or []),
            }
        except (OSError, ValueError):
            return {"running_release": None, "running_version": self.base_version, "history": []}

    def _load_journal(self) -> dict[str, Any] | None:
        try:
            doc = json.loads(self.journal_path.read_text())
        except FileNotFoundError:
            return None
        except (OSError, ValueError) as exc:
            log.error("unreadable software journal %s (%s); ignored", self.journal_path, exc)
            return None
        return doc if isinstance(doc, dict) and "phase" in doc else None

    async def _write(self, path: Path, doc: dict[str, Any]) -> None:
        data = json.dumps(doc, indent=2, sort_keys=True).encode()
        await asyncio.to_thread(write_atomic, path, data)

    async def _journal(self, journal: dict[str, Any], phase: str) -> None:
        journal["phase"] = phase
        journal["boot_id"] = self.boot_id
        await self._write(self.journal_path, journal)

    async def _clear_journal(self) -> None:
        def clear() -> None:
            self.journal_path.unlink(missing_ok=True)
            dir_fd = os.open(self.dir, os.O_RDONLY)
            try:
                os.fsync(dir_fd)
            finally:
                os.close(dir_fd)

        with contextlib.suppress(FileNotFoundError):
            await asyncio.to_thread(clear)

    async def _set_running(self, release: str | None, version: str, history: list[Any]) -> None:
        running = {"running_release": release, "running_version": version, "history": history}
        await self._write(self.running_path, running)
        self.running = running

    # Reports ---------------------------------------------------------------------------------

    def disk_free_mb(self) -> int:
        path = self.state_dir if self.state_dir.exists() else Path("/")
        try:
            return shutil.disk_usage(path).free // (1024 * 1024)
        except OSError:
            return 0

    def report(
        self,
        state: str,
        *,
        release_id: str | None,
        ctx: Ctx | None,
        error: str | None = None,
        pending_reboot: bool = False,
        remember: bool = True,
    ) -> None:
        """Queue an ``agent.software.reported`` (never blocks; kept while the broker is away)."""
        if error is not None and len(error) > ERROR_MAX:
            error = error[: ERROR_MAX - 3] + "..."
        if remember:
            self.state, self.release_id, self.error = state, release_id, error
            self.command = ctx.id if ctx else None
            self.correlationid = ctx.correlationid if ctx else None
            self.pending_reboot = pending_reboot
        level = logging.WARNING if state == "failed" else logging.INFO
        log.log(
            level, "software %s: %s%s", release_id or "-", state, f" ({error})" if error else ""
        )
        self._emit(
            SoftwareReported(
                mgmt_mac=self.mgmt_mac,
                hostname=self.hostname,
                boot_id=self.boot_id,
                running_release=self.running["running_release"],
                running_version=self.running["running_version"],
                release_id=release_id,
                state=state,
                pending_reboot=pending_reboot,
                error=error,
                disk_free_mb=self.disk_free_mb(),
                command=ctx.id if ctx else None,
                time=utcnow(),
            ),
            ctx.correlationid if ctx else None,
        )

    def report_current(self) -> None:
        """Say again where the host is (at every announce: the software service learns the
        running version of every host that starts or comes back)."""
        ctx = Ctx(self.command, self.correlationid) if self.command else None
        self.report(
            self.state,
            release_id=self.release_id,
            ctx=ctx,
            error=self.error,
            pending_reboot=self.pending_reboot,
        )

    # Entry points ----------------------------------------------------------------------------

    @property
    def busy(self) -> bool:
        return self._task is not None and not self._task.done()

    def start(self) -> None:
        """Finish or roll back what a previous run left in the journal (in a task of its own;
        idempotent)."""
        if not self.busy:
            self.clear_downloads()
        journal = self._load_journal()
        if self._task is None and journal is not None:
            install = journal.get("action", "install") == "install"
            action = (journal["release_id"], journal.get("version") if install else None)
            self._run(self.resume(), action)

    def handle(self, ctx: Ctx, command: SoftwareInstall | SoftwareRollback) -> str:
        """Start ``command`` in its own task; returns the outcome to count."""
        version = command.version if isinstance(command, SoftwareInstall) else None
        if self.busy or self.going_down:
            if self._action == (command.release_id, version):  # re-sent: say where it is
                self.report_current()
                return "in-progress"
            why = "the host is rebooting" if self.going_down else "another software action"
            self.report(
                "failed",
                release_id=command.release_id,
                ctx=ctx,
                error=why if self.going_down else f"{why} is in progress",
                remember=False,
            )
            return "busy"
        if isinstance(command, SoftwareInstall):
            if command.version == self.running["running_version"]:
                self.report("installed", release_id=command.release_id, ctx=ctx)
                return "already-installed"
            self._run(self._install(ctx, command), (command.release_id, command.version))
            return "started"
        self._run(self._rollback(ctx, command), (command.release_id, None))
        return "started"

    def _run(self, coro: Any, action: tuple[str, str | None] | None) -> None:
        self._action = action
        self._task = asyncio.get_running_loop().create_task(coro, name="software")
        self._task.add_done_callback(self._done)

    def _done(self, task: asyncio.Task[None]) -> None:
        if not task.cancelled() and task.exception() is not None:
            log.error("software action crashed", exc_info=task.exception())

    async def stop(self) -> None:
        """Stop the action in progress (its hook is killed; the journal stays for next start)."""
        if self._task is not None and not self._task.done():
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task

    # Install ---------------------------------------------------------------------------------

    async def _install(self, ctx: Ctx, command: SoftwareInstall) -> None:
        rid = command.release_id
        journal: dict[str, Any] = {
            "action": "install",
            "command": ctx.id,
            "correlationid": ctx.correlationid,
            "release_id": rid,
            "version": command.version,
            "previous": {
                "release": self.running["running_release"],
                "version": self.running["running_version"],
            },
            "reboot_required": command.reboot_required,
            "hooks": {},
        }
        if not re.fullmatch(r"^[a-z0-9][a-z0-9._-]{0,63}$", rid):  # releases.RELEASE_ID_PATTERN
            self.report("failed", release_id=rid, ctx=ctx, error=f"invalid release id {rid!r}")
            return
        try:  # before any request: keys to verify with, and the URL is the software service's
            keys = self.trust.keys()
            self._check_source(command.url)
        except _Refused as exc:
            self._refused(rid, exc)
            self.report("failed", release_id=rid, ctx=ctx, error=str(exc))
            return
        await self._journal(journal, "downloading")
        self.report("downloading", release_id=rid, ctx=ctx)
        try:
            journal["hooks"] = await self._fetch(command, keys)
        except _Refused as exc:
            self._refused(rid, exc)
            await self._fail(journal, ctx, str(exc), rollback=False)
            return
        await self._journal(journal, "installing")
        self.report("installing", release_id=rid, ctx=ctx)
        error = await self._hook("install", journal)
        if error is not None:
            await self._fail(journal, ctx, error)
            return
        if command.reboot_required:
            await self._reboot_for(journal, ctx)
            return
        await self._activate(journal, ctx)

    def _refused(self, release_id: str, exc: _Refused) -> None:
        log.warning("refused to install release %s (%s): %s", release_id, exc.reason, exc)
        self._count_refusal(exc.reason)

    def _check_source(self, url: str) -> None:
        try:
            self.trust.sources.check(url)
        except Refused as exc:
            raise _Refused("url", f"download refused: {exc}; nothing was requested") from None

    async def _fetch(self, command: SoftwareInstall, keys: list[str]) -> dict[str, str | None]:
        """Download, verify and put the release in place; the hooks to run. Raises
        :class:`_Refused` (and leaves neither the download nor a staged release behind)."""
        rid = command.release_id
        staging = self.releases / f".{rid}.partial"
        archive = self.downloads / f"{rid}.tar.gz.partial"
        try:
            try:
                await asyncio.to_thread(self._clear_staging, staging, archive)
            except OSError as exc:
                raise _Refused("download", f"cannot prepare {self.downloads}: {exc}") from None
            digest = await self._download(command, archive)
            if digest != command.archive_sha256:
                raise _Refused(
                    "digest",
                    f"archive sha256 {digest} does not match the command's "
                    f"{command.archive_sha256} (tampered or truncated download); nothing was run",
                )
            unpacked = await self._unpack(archive, staging)
            hooks = self._verify(command, unpacked, keys)
            try:
                await asyncio.to_thread(self._put_in_place, command, unpacked, staging, hooks)
            except OSError as exc:
                raise _Refused("archive", f"cannot put the release in place: {exc}") from None
        except _Refused:
            await asyncio.to_thread(self._clear_staging, staging, archive)
            raise
        except BaseException:
            with contextlib.suppress(OSError):
                self._clear_staging(staging, archive)
            raise
        await asyncio.to_thread(self._clear_staging, None, archive)
        return hooks

    async def _download(self, command: SoftwareInstall, archive: Path) -> str:
        try:
            got = await asyncio.to_thread(
                download,
                command.url,
                archive,
                sources=self.trust.sources,
                limit=self.trust.max_archive_bytes,
                timeout_s=DOWNLOAD_TIMEOUT_S,
            )
        except Refused as exc:  # a redirect to elsewhere
            raise _Refused("url", f"download refused: {exc}") from None
        except (DownloadFailed, OSError) as exc:
            raise _Refused("download", f"download failed: {exc}; nothing was run") from None
        log.info("software %s: downloaded %d bytes", command.release_id, got.size)
        return got.sha256

    async def _unpack(self, archive: Path, staging: Path) -> Any:
        from roost_shared.releases import ReleaseError, unpack

        try:
            return await asyncio.to_thread(unpack, archive, staging)
        except ReleaseError as exc:
            raise _Refused("archive", f"invalid release archive: {exc}; nothing was run") from None
        except OSError as exc:
            raise _Refused("archive", f"cannot unpack the release: {exc}") from None

    def _verify(
        self, command: SoftwareInstall, unpacked: Any, keys: list[str]
    ) -> dict[str, str | None]:
        """The signature of the metadata is the site's, and the command asks for what it signed
        (``unpacked`` has checked every file against the signed metadata); the hooks to run."""
        from roost_shared.releases import ReleaseError, verify_signature

        meta = unpacked.metadata
        try:
            signer = verify_signature(unpacked, keys)
        except ReleaseError as exc:
            raise _Refused(
                "signature", f"the release's signature is {exc.reason}; nothing was run"
            ) from None
        if signer is None:
            raise _Refused(
                "unsigned", "the release is not signed (no metadata.sig); nothing was run"
            )
        if meta.id != command.release_id or meta.version != command.version:
            raise _Refused(
                "mismatch",
                f"the archive is release {meta.id} {meta.version}, not "
                f"{command.release_id} {command.version}; nothing was run",
            )
        if meta.files != command.files:
            differ = sorted(
                n
                for n in set(meta.files) | set(command.files)
                if meta.files.get(n) != command.files.get(n)
            )
            raise _Refused(
                "mismatch",
                f"the archive's files do not match the command's: {', '.join(differ[:10])}; "
                "nothing was run",
            )
        hooks = {
            "install": meta.hooks.install,
            "activate": meta.hooks.activate,
            "rollback": meta.hooks.rollback,
        }
        asked = {
            "install": command.install_hook,
            "activate": command.activate_hook,
            "rollback": command.rollback_hook,
        }
        for kind, path in asked.items():
            if path is not None and path != hooks[kind]:
                raise _Refused(
                    "mismatch",
                    f"the command's {kind} hook {path!r} is not the signed release's "
                    f"({hooks[kind]!r}); nothing was run",
                )
        return hooks

    def _clear_staging(self, staging: Path | None, archive: Path) -> None:
        archive.unlink(missing_ok=True)
        archive.parent.mkdir(parents=True, exist_ok=True)
        if staging is not None:
            shutil.rmtree(staging, ignore_errors=True)

    def clear_downloads(self) -> None:
        """Remove what an interrupted download or unpack left (at start)."""
        shutil.rmtree(self.downloads, ignore_errors=True)
        if self.releases.is_dir():
            for leftover in self.releases.glob(".*.partial"):
                shutil.rmtree(leftover, ignore_errors=True)

    def _put_in_place(
        self,
        command: SoftwareInstall,
        unpacked: Any,
        staging: Path,
        hooks: dict[str, str | None],
    ) -> None:
        """The verified staging directory becomes ``releases/<id>`` (hooks executable)."""
        rid = command.release_id
        target = self.releases / rid
        executables = {h for h in hooks.values() if h}
        for name in unpacked.files:
            path = staging.joinpath(*PurePosixPath(name).parts)
            mode = unpacked.modes.get(name, 0o644) & 0o755
            path.chmod(mode | 0o755 if name in executables else mode | 0o600)
        (staging / "metadata.json").write_bytes(unpacked.metadata_bytes)
        shutil.rmtree(target, ignore_errors=True)
        os.replace(staging, target)
        record = {
            "release_id": rid,
            "version": command.version,
            "hooks": hooks,
            "reboot_required": command.reboot_required,
        }
        write_atomic(self.releases / f"{rid}.json", json.dumps(record, indent=2).encode())

    async def _activate(self, journal: dict[str, Any], ctx: Ctx) -> None:
        rid = journal["release_id"]
        await self._journal(journal, "activating")
        self.report("activating", release_id=rid, ctx=ctx)
        error = await self._hook("activate", journal)
        if error is not None:
            await self._fail(journal, ctx, error)
            return
        previous = journal["previous"]
        history = [*self.running["history"], previous]
        await self._set_running(rid, journal["version"], history)
        await self._clear_journal()
        self.report("installed", release_id=rid, ctx=ctx)

    async def _fail(
        self, journal: dict[str, Any], ctx: Ctx, error: str, *, rollback: bool = True
    ) -> None:
        """Undo what can be undone (the release's rollback hook), keep the running version."""
        if rollback:
            undo = await self._hook("rollback", journal)
            if undo is not None:
                error = f"{error}; then {undo}"
        await self._clear_journal()
        self.report("failed", release_id=journal["release_id"], ctx=ctx, error=error)

    # Rollback --------------------------------------------------------------------------------

    async def _rollback(self, ctx: Ctx, command: SoftwareRollback) -> None:
        rid = command.release_id
        running = self.running["running_release"]
        if rid != running:
            now = running or f"the base software {self.running['running_version']}"
            self.report(
                "failed",
                release_id=rid,
                ctx=ctx,
                error=f"release {rid} is not the running release (running: {now}); "
                "only the running release can be rolled back",
            )
            return
        try:
            record = json.loads((self.releases / f"{rid}.json").read_text())
        except (OSError, ValueError):
            record = {"hooks": {}}
        history = self.running["history"]
        back_to = history[-1] if history else {"release": None, "version": self.base_version}
        journal: dict[str, Any] = {
            "action": "rollback",
            "command": ctx.id,
            "correlationid": ctx.correlationid,
            "release_id": rid,
            "version": self.running["running_version"],
            "previous": back_to,
            "reboot_required": command.reboot_required,
            "hooks": record.get("hooks") or {},
        }
        await self._journal(journal, "rolling-back")
        self.report("rolling-back", release_id=rid, ctx=ctx)
        error = await self._hook("rollback", journal)
        if error is not None:
            await self._clear_journal()
            self.report("failed", release_id=rid, ctx=ctx, error=error)
            return
        if command.reboot_required:
            await self._reboot_for(journal, ctx)
            return
        await self._rolled_back(journal, ctx)

    async def _rolled_back(self, journal: dict[str, Any], ctx: Ctx) -> None:
        back_to = journal["previous"]
        history = list(self.running["history"])
        if history and history[-1] == back_to:
            history.pop()
        await self._set_running(back_to["release"], back_to["version"], history)
        await self._clear_journal()
        self.report("rolled-back", release_id=journal["release_id"], ctx=ctx)

    # Reboots and restarts --------------------------------------------------------------------

    async def _reboot_for(self, journal: dict[str, Any], ctx: Ctx) -> None:
        """Write down that a reboot is due (with this boot's id), say so, reboot."""
        await self._journal(journal, "rebooting")
        self.report("rebooting", release_id=journal["release_id"], ctx=ctx, pending_reboot=True)
        self.going_down = True
        try:
            await self._reboot()
        except RebootFailed as exc:
            self.going_down = False
            error = f"reboot failed: {exc}"
            if journal["action"] == "install":
                await self._fail(journal, ctx, error)
            else:
                await self._clear_journal()
                self.report("failed", release_id=journal["release_id"], ctx=ctx, error=error)

    async def resume(self) -> None:
        """At start: finish an action after the reboot it asked for, or undo one this agent
        died in the middle of -- never leave it half-applied silently."""
        journal = self._load_journal()
        if journal is None:
            return
        phase, action = journal["phase"], journal.get("action", "install")
        ctx = Ctx(journal.get("command") or "", journal.get("correlationid"))
        rid = journal["release_id"]
        log.warning("software %s: found %s in phase %s at start", rid, action, phase)
        if phase == "rebooting":
            rebooted = journal.get("boot_id") != self.boot_id
            if not rebooted:
                error = "reboot did not happen (same boot id)"
                if action == "install":
                    await self._fail(journal, ctx, error)
                else:
                    await self._clear_journal()
                    self.report("failed", release_id=rid, ctx=ctx, error=error)
            elif action == "install":
                await self._activate(journal, ctx)
            else:
                await self._rolled_back(journal, ctx)
            return
        done = (
            self.running["running_release"] == rid
            and self.running["running_version"] == journal["version"]
        )
        if action == "install" and phase == "activating" and done:
            # Died between making it the running release and clearing the journal: it is done.
            await self._clear_journal()
            self.report("installed", release_id=rid, ctx=ctx)
            return
        if action == "install":
            await self._fail(
                journal,
                ctx,
                f"interrupted by an agent restart during {phase}; rolled back",
                rollback=phase != "downloading",
            )
            return
        await self._clear_journal()
        self.report(
            "failed",
            release_id=rid,
            ctx=ctx,
            error=f"interrupted by an agent restart during {phase}; running release unchanged",
        )

    # Hooks -----------------------------------------------------------------------------------

    async def _hook(self, kind: str, journal: dict[str, Any]) -> str | None:
        """Run the release's ``kind`` hook, if it has one; None when it succeeded (or there is
        none), else the error to report."""
        name = (journal.get("hooks") or {}).get(kind)
        if not name:
            return None
        rid = journal["release_id"]
        release_dir = self.releases / rid
        path = release_dir.joinpath(*PurePosixPath(name).parts)
        if not path.is_file():
            return f"{kind} hook {name} is missing from {release_dir}"
        env = {k: os.environ[k] for k in INHERITED_ENV if k in os.environ}
        env.update(
            ROOST_HOOK=kind,
            ROOST_RELEASE_ID=rid,
            ROOST_RELEASE_VERSION=journal["version"],
            ROOST_RELEASE_DIR=str(release_dir),
            ROOST_PREVIOUS_VERSION=journal["previous"]["version"],
            ROOST_HOSTNAME=self.hostname,
            ROOST_STATE_DIR=str(self.state_dir),
        )
        if self._child_setup is None:
            from roost_agent.pmon import _death_signal_setup  # ctypes only when hooks run

            self._child_setup = _death_signal_setup(os.getpid())
        log.info("software %s: running %s hook %s", rid, kind, name)
        try:
            proc = await asyncio.create_subprocess_exec(
                str(path),
                cwd=release_dir,
                env=env,
                stdin=asyncio.subprocess.DEVNULL,
                stdout=asyncio.subprocess.DEVNULL,
                stderr=asyncio.subprocess.PIPE,
                start_new_session=True,  # its own group: a timeout kills all of it
                preexec_fn=self._child_setup,  # and it dies with the agent
            )
        except OSError as exc:
            return f"{kind} hook {name} could not run: {exc}"
        try:
            _, stderr = await asyncio.wait_for(proc.communicate(), self.hook_timeout_s)
        except TimeoutError:
            _kill_group(proc.pid)
            await proc.wait()
            return f"{kind} hook {name} timed out after {self.hook_timeout_s:g}s"
        except asyncio.CancelledError:
            _kill_group(proc.pid)
            raise
        if proc.returncode == 0:
            return None
        code = proc.returncode
        how = f"was killed by signal {-code}" if code < 0 else f"exited with {code}"
        return f"{kind} hook {name} {how}: {_tail(stderr.decode(errors='replace'))}"


def _kill_group(pgid: int) -> None:
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(pgid, signal.SIGKILL)
