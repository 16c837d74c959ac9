"""The data-staging seam between the engine and the transfer layer (tesp_api/transfer).

Inputs: ``content`` is sent to Pulsar as a file as is; a URL input is fetched by this service
through the TransferMux into the engine's scratch directory (a directory input is packed into one
tar that the job script unpacks), then uploaded to Pulsar.
Outputs: the job script lists what the task produced (manifest: files, directories expanded,
wildcard bases listed); here each listed file is fetched from Pulsar and uploaded to its URL.
"""

from __future__ import annotations

import asyncio
import logging
import shutil
import tarfile
from collections.abc import Awaitable, Callable
from pathlib import Path

from tesp_api.config.settings import TransferSettings
from tesp_api.engine.results import ManifestEntry
from tesp_api.tes.jobplan import has_wildcard, normalise
from tesp_api.tes.models import TesFileType, TesInput, TesOutputFileLog, TesTask
from tesp_api.transfer.egress import EgressPolicy

log = logging.getLogger(__name__)

Fetch = Callable[[str, Path], Awaitable[bool]]  # (path under the job's working dir, local dest) -> found


class StagingError(Exception):
    """An input could not be fetched or an output not stored; the message is safe for task logs."""


class Staging:
    def __init__(self, settings: TransferSettings, *, egress: EgressPolicy | None = None) -> None:
        from tesp_api.transfer.mux import TransferMux

        self._mux = TransferMux(settings, egress=egress)

    async def fetch_input(self, index: int, inp: TesInput, scratch: Path) -> tuple[Path, bool]:
        """Download a URL input; returns (local file to upload, whether it is a tar of a directory)."""
        from tesp_api.transfer.errors import TransferError

        assert inp.url is not None
        dest = scratch / f"in-{index}"
        try:
            await self._mux.download(inp.url, dest, inp.type or TesFileType.FILE)
        except TransferError as exc:
            raise StagingError(f"inputs[{index}] ({inp.path}): {exc}") from None
        if inp.type != TesFileType.DIRECTORY:
            return dest, False
        archive = scratch / f"in-{index}.tar"

        def pack() -> None:
            with tarfile.open(archive, "w") as tar:
                tar.add(dest, arcname=".")
            shutil.rmtree(dest, ignore_errors=True)

        await asyncio.to_thread(pack)
        return archive, True

    async def store_outputs(
        self, task: TesTask, manifest: list[ManifestEntry], fetch: Fetch, scratch: Path
    ) -> tuple[list[TesOutputFileLog], list[str]]:
        """Upload every output the job produced. Returns the file logs and system-log lines for
        outputs that were missing. Raises StagingError when an upload fails."""
        from tesp_api.transfer.errors import TransferError
        from tesp_api.transfer.outputs import plan_wildcard_output

        logs: list[TesOutputFileLog] = []
        notes: list[str] = []
        for i, out in enumerate(task.outputs or []):
            entries = [e for e in manifest if e.output_index == i]
            local_root = scratch / f"out-{i}"

            def local_of(container_path: str, root: Path = local_root) -> Path:
                return root / container_path.lstrip("/")

            try:
                if has_wildcard(out.path):
                    targets = plan_wildcard_output(out, [e.container_path for e in entries], local_of)
                    if not targets:
                        notes.append(f"outputs[{i}]: nothing matched {out.path}")
                    for t in targets:
                        await self._fetch(fetch, t.path, t.local)
                        logs += await self._mux.upload(
                            t.local, t.url, TesFileType.FILE, container_path=t.path
                        )
                elif out.type == TesFileType.DIRECTORY:
                    if not entries:
                        notes.append(f"outputs[{i}]: directory {out.path} not found or empty")
                        continue
                    for e in entries:
                        await self._fetch(fetch, e.container_path, local_of(e.container_path))
                    logs += await self._mux.upload(
                        local_of(out.path), out.url, TesFileType.DIRECTORY, container_path=out.path
                    )
                else:
                    if not entries:
                        notes.append(f"outputs[{i}]: file {out.path} not found")
                        continue
                    await self._fetch(fetch, out.path, local_of(out.path))
                    logs += await self._mux.upload(
                        local_of(out.path), out.url, TesFileType.FILE, container_path=out.path
                    )
            except TransferError as exc:
                raise StagingError(f"outputs[{i}] ({out.path}): {exc}") from None
        return logs, notes

    @staticmethod
    async def _fetch(fetch: Fetch, container_path: str, dest: Path) -> None:
        if not await fetch(
            "fs" + normalise(container_path), dest
        ):  # as the job wrote it (file_mapper.host_rel)
            raise StagingError(f"output {container_path} could not be fetched from Pulsar")

    async def aclose(self) -> None:
        await self._mux.aclose()
