"""Container images without a registry: ``local/busybox:1`` from Debian's busybox-static.

No registry is reachable from these machines (and nothing may leave them), so the image is built
from a Debian package: the static busybox binary, a symlink per applet in /bin, /tmp and a minimal
/etc, then ``docker import`` / ``podman import`` with ``ENV PATH=/bin``. The busybox binary comes
from the installed busybox-static package (scripts/test.sh installs it) or, when it is not
installed, from ``apt-get download busybox-static`` + ``dpkg -x``.

The rootfs tarball is cached per machine in ``.cache/tesp-test-images/`` at the repository root
(gitignored; ``TESP_TEST_IMAGE_CACHE`` overrides), keyed by the busybox binary's hash; importing it
takes ~0.3 s per daemon.
"""

from __future__ import annotations

import hashlib
import io
import os
import subprocess
import tarfile
import tempfile
from collections.abc import Sequence
from pathlib import Path
from typing import Literal

__all__ = ["BUSYBOX_IMAGE", "ImageUnavailable", "busybox_rootfs_tar", "import_image"]

BUSYBOX_IMAGE = "local/busybox:1"
IMAGE_CHANGES = ("ENV PATH=/bin",)
REPO_ROOT = Path(__file__).resolve().parents[2]


class ImageUnavailable(RuntimeError):
    """No busybox-static binary could be found or downloaded."""


def cache_dir() -> Path:
    return Path(os.environ.get("TESP_TEST_IMAGE_CACHE") or REPO_ROOT / ".cache" / "tesp-test-images")


def _is_static_elf(path: Path) -> bool:
    """True for an ELF executable without a PT_INTERP program header (statically linked)."""
    try:
        data = path.read_bytes()
    except OSError:
        return False
    if data[:4] != b"\x7fELF" or data[4] != 2:  # 64-bit only (the build machines are x86-64/arm64)
        return False
    order: Literal["little", "big"] = "little" if data[5] == 1 else "big"
    phoff = int.from_bytes(data[0x20:0x28], order)
    phentsize = int.from_bytes(data[0x36:0x38], order)
    phnum = int.from_bytes(data[0x38:0x3A], order)
    for i in range(phnum):
        off = phoff + i * phentsize
        if int.from_bytes(data[off : off + 4], order) == 3:  # PT_INTERP
            return False
    return True


def _installed_busybox() -> Path | None:
    """The binary of the installed busybox-static package, if that package is installed."""
    try:
        out = subprocess.run(
            ["dpkg", "-L", "busybox-static"], capture_output=True, text=True, timeout=30, check=False
        ).stdout
    except OSError:
        return None
    for line in out.splitlines():
        p = Path(line.strip())
        if p.name == "busybox" and p.parent.name == "bin" and p.is_file() and _is_static_elf(p):
            return p
    return None


def _downloaded_busybox(work: Path) -> Path:
    try:
        subprocess.run(
            ["apt-get", "download", "busybox-static"], cwd=work, capture_output=True, timeout=120, check=True
        )
        debs = sorted(work.glob("busybox-static_*.deb"))
        if not debs:
            raise ImageUnavailable("apt-get download busybox-static produced no .deb")
        subprocess.run(
            ["dpkg", "-x", str(debs[0]), str(work / "x")], capture_output=True, timeout=60, check=True
        )
    except (OSError, subprocess.SubprocessError) as exc:
        raise ImageUnavailable(f"busybox-static is not installed and could not be downloaded: {exc}") from exc
    for candidate in (work / "x/bin/busybox", work / "x/usr/bin/busybox"):
        if candidate.is_file():
            return candidate
    raise ImageUnavailable("the busybox-static package holds no bin/busybox")


def _applets(busybox: Path) -> list[str]:
    out = subprocess.run(
        [str(busybox), "--list"], capture_output=True, text=True, timeout=30, check=True
    ).stdout
    return sorted({a.strip() for a in out.split() if a.strip() and "/" not in a and a.strip() != "busybox"})


def _add(
    tar: tarfile.TarFile,
    name: str,
    *,
    kind: bytes = tarfile.DIRTYPE,
    mode: int = 0o755,
    data: bytes = b"",
    link: str = "",
) -> None:
    info = tarfile.TarInfo(name)
    info.type = kind
    info.mode = mode
    info.linkname = link
    info.size = len(data) if kind == tarfile.REGTYPE else 0
    tar.addfile(info, io.BytesIO(data) if kind == tarfile.REGTYPE else None)


def _build_rootfs_tar(busybox: Path, dest: Path) -> None:
    binary = busybox.read_bytes()
    tmp = dest.with_name(dest.name + f".{os.getpid()}.tmp")
    with tarfile.open(tmp, "w", format=tarfile.GNU_FORMAT) as tar:
        for d in ("bin", "etc", "dev", "proc", "sys", "root", "home"):
            _add(tar, d)
        _add(tar, "tmp", mode=0o1777)
        _add(tar, "bin/busybox", kind=tarfile.REGTYPE, data=binary)
        for applet in _applets(busybox):
            _add(tar, f"bin/{applet}", kind=tarfile.SYMTYPE, mode=0o777, link="busybox")
        _add(
            tar,
            "etc/passwd",
            kind=tarfile.REGTYPE,
            mode=0o644,
            data=b"root:x:0:0:root:/root:/bin/sh\nnobody:x:65534:65534:nobody:/home:/bin/false\n",
        )
        _add(tar, "etc/group", kind=tarfile.REGTYPE, mode=0o644, data=b"root:x:0:\nnogroup:x:65534:\n")
    tmp.replace(dest)


def busybox_rootfs_tar() -> Path:
    """The cached rootfs tarball of ``local/busybox:1``, built on first use."""
    with tempfile.TemporaryDirectory(prefix="tesp-busybox-") as work:
        busybox = _installed_busybox() or _downloaded_busybox(Path(work))
        digest = hashlib.sha256(busybox.read_bytes()).hexdigest()[:16]
        cache = cache_dir()
        cache.mkdir(parents=True, exist_ok=True)
        dest = cache / f"busybox-rootfs-{digest}.tar"
        if not dest.exists():
            _build_rootfs_tar(busybox, dest)
    return dest


def import_image(
    cli: Sequence[str],
    env: dict[str, str],
    ref: str = BUSYBOX_IMAGE,
    tarball: Path | None = None,
    changes: Sequence[str] = IMAGE_CHANGES,
) -> None:
    """``<cli> import --change ... - ref`` with the rootfs on stdin (docker and podman share the syntax)."""
    tarball = tarball or busybox_rootfs_tar()
    argv = [*cli, "import"]
    for change in changes:
        argv += ["--change", change]
    argv += ["-", ref]
    with open(tarball, "rb") as fh:
        result = subprocess.run(
            argv, env={**os.environ, **env}, stdin=fh, capture_output=True, timeout=120, check=False
        )
    if result.returncode != 0:
        raise RuntimeError(f"{' '.join(argv)} failed: {result.stderr.decode(errors='replace').strip()}")
