"""The last configuration that loaded, as bytes: what the supervisor starts workers from.

A worker that dies is restarted by the supervisor. If it re-read the config
and its files from disk, a moment when the CA file is missing or the config
is broken would turn one crash into a crash loop, while the other workers
serve happily from what they loaded earlier. So the supervisor keeps a
*bundle*: the bytes of the config file and of every file it names (keys,
certificates, CAs, CRLs, passwords files), captured when they last loaded
together, and hands it to each worker it starts through the worker's stdin
(an inherited pipe: never argv or the environment, never a log line).

The worker builds its TLS state from the bundle, through anonymous memory
files (``memfd_create``) that only OpenSSL's path-based loaders ever see,
while its config keeps the real paths. Its file watcher then compares the
files on disk with the stamps they had when the bundle was taken, and
rebuilds from disk as usual once they change: a file fixed on disk reaches
the new worker like the others.

The supervisor refreshes the bundle after every reload that loaded, and
when the files change on disk and load (it polls them like a worker does).
A CRL file that fails to load keeps its bytes from the previous bundle, as
a worker keeps the CRL it loaded before.
"""

from __future__ import annotations

import base64
import json
import os
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, replace
from pathlib import Path

from pgtls_proxy.config import Config, ConfigError, config_from_bytes
from pgtls_proxy.errors import KeyPathError
from pgtls_proxy.passwords import PasswordsFile, PasswordsFileError, parse_userlist
from pgtls_proxy.pki.revocation import CRLLoader, CRLSource, RevocationChecker, crl_sources
from pgtls_proxy.runtime import Snapshot, build_state
from pgtls_proxy.secretfiles import require_private
from pgtls_proxy.watch import FileStamp, FileStamps, file_stamp, watched_files

# Set in a worker's environment when its stdin carries a bundle (a flag only).
ENV_BUNDLE = "PGTLS_PROXY_BUNDLE"


@dataclass(frozen=True, slots=True)
class Bundle:
    """The config file and the files it names, as they were when they loaded."""

    source: Path
    config: bytes
    files: dict[str, bytes]
    # What each file looked like on disk when it was read (see watch.file_stamp).
    stamps: dict[str, FileStamp]
    # The CRL files in the order they loaded, with the key that named each.
    crls: tuple[tuple[str, str], ...]

    def encode(self) -> bytes:
        """One JSON document (file contents in base64)."""
        b64 = base64.b64encode
        return json.dumps(
            {
                "source": str(self.source),
                "config": b64(self.config).decode(),
                "files": {path: b64(data).decode() for path, data in self.files.items()},
                "stamps": self.stamps,
                "crls": self.crls,
            }
        ).encode()

    @classmethod
    def decode(cls, raw: bytes) -> Bundle:
        doc = json.loads(raw)
        b64 = base64.b64decode
        return cls(
            source=Path(doc["source"]),
            config=b64(doc["config"]),
            files={path: b64(data) for path, data in doc["files"].items()},
            stamps={
                path: tuple(stamp) if stamp is not None else None
                for path, stamp in doc["stamps"].items()
            },
            crls=tuple((key, path) for key, path in doc["crls"]),
        )

    def parse(self) -> Config:
        """The config as it was when the bundle was taken; ConfigError if unusable."""
        return config_from_bytes(self.config, self.source)

    def snapshot(self, config: Config, paths: list[Path] | None = None) -> FileStamps:
        """The watcher's view of ``config``'s files (or ``paths``) as they were when read.

        A CRL file of the bundle that is gone from ``crl_dir`` since stays in
        the view, so the view differs from the disk's and the change is seen.
        """
        names = [str(path) for path in (watched_files(config) if paths is None else paths)]
        names += [path for _key, path in self.crls if path not in names]
        return tuple((name, self.stamps.get(name)) for name in names)


def bundled_files(config: Config) -> list[Path]:
    """Every file whose content a worker needs: the watched ones and the passwords files."""
    paths = watched_files(config)  # the metrics endpoint's files among them
    for backend in config.backends.values():
        if backend.auth.passwords_file is not None:
            paths.append(backend.auth.passwords_file)
    return paths


def capture(config: Config, raw_config: bytes, previous: Bundle | None = None) -> Bundle:
    """Read every file ``config`` names, as it is now.

    Each file is stamped before it is read, so a change during the read
    shows as a change to the watcher. A file that cannot be read is left
    out: building from the bundle then reads its real path and fails with
    the words a reload from disk would use. A CRL file that cannot be read
    keeps its bytes from ``previous`` when it had some.
    """
    assert config.source is not None
    files: dict[str, bytes] = {}
    stamps: dict[str, FileStamp] = {}
    for path in bundled_files(config):
        key = str(path)
        stamps[key] = file_stamp(path)
        try:
            files[key] = path.read_bytes()
        except OSError:
            if previous is not None and key in previous.files and _is_crl(config, path):
                files[key] = previous.files[key]
    return Bundle(config.source, raw_config, files, stamps, _crl_order(config, files))


def _is_crl(config: Config, path: Path) -> bool:
    return any(source.path == path for source in crl_sources(config.tls))


def _crl_order(config: Config, files: dict[str, bytes]) -> tuple[tuple[str, str], ...]:
    if config.tls.revocation == "off":
        return ()
    return tuple(
        (source.key, str(source.path))
        for source in crl_sources(config.tls)
        if str(source.path) in files
    )


def capture_from_disk(source: Path, previous: Bundle | None = None) -> tuple[Bundle, Snapshot]:
    """Read the config file and its files, and prove they load; raise as a reload would.

    Also checks the modes of the real files (a bundle's copies are private).
    """
    try:
        raw = source.read_bytes()
    except OSError as exc:
        raise ConfigError("", f"cannot read config file {source}: {exc.strerror}") from None
    config = config_from_bytes(raw, source)
    require_private(config)
    return refresh(config, raw, previous)


def refresh(config: Config, raw: bytes, previous: Bundle | None) -> tuple[Bundle, Snapshot]:
    """A new bundle of ``config``'s files as they are now, and the state it builds.

    A CRL file that does not load now keeps the bytes ``previous`` had for
    it, so the bundle never holds less than the running workers do.
    """
    bundle = capture(config, raw, previous)
    state = build(bundle, config)
    if previous is not None and state.revocation.problems:
        files = dict(bundle.files)
        for problem in state.revocation.problems:
            key = str(problem.source.path)
            if key in previous.files:
                files[key] = previous.files[key]
        bundle = replace(bundle, files=files, crls=_crl_order(config, files))
        state = build(bundle, config)
    return bundle, state


@contextmanager
def _memory_files(bundle: Bundle) -> Iterator[dict[str, str]]:
    """Each file of the bundle as an anonymous in-memory file; real path -> its path.

    The memory files are private (0600) and vanish when closed, at the end
    of the ``with``: OpenSSL has copied what it needs by then.
    """
    fds: list[int] = []
    paths: dict[str, str] = {}
    try:
        for path, data in bundle.files.items():
            fd = os.memfd_create("pgtls-proxy", os.MFD_CLOEXEC)
            fds.append(fd)
            os.fchmod(fd, 0o600)
            view = memoryview(data)
            while view:
                view = view[os.write(fd, view) :]
            paths[path] = f"/proc/self/fd/{fd}"
        yield paths
    finally:
        for fd in fds:
            os.close(fd)


def _remap(config: Config, bundle: Bundle, paths: dict[str, str]) -> Config:
    """``config`` reading every file from memory; CRLs as the list the bundle kept."""

    def mem(path: Path | None) -> Path | None:
        if path is None:
            return None
        return Path(paths.get(str(path), str(path)))

    def must(path: Path) -> Path:
        return Path(paths.get(str(path), str(path)))

    tls = replace(
        config.tls,
        cert_file=must(config.tls.cert_file),
        key_file=must(config.tls.key_file),
        client_ca_file=must(config.tls.client_ca_file),
        key_passphrase_file=mem(config.tls.key_passphrase_file),
        crl_files=tuple(must(Path(path)) for _key, path in bundle.crls),
        crl_dir=None,
    )
    backends = {
        name: replace(
            backend,
            tls=replace(
                backend.tls,
                ca_file=mem(backend.tls.ca_file),
                cert_file=mem(backend.tls.cert_file),
                key_file=mem(backend.tls.key_file),
            ),
        )
        for name, backend in config.backends.items()
    }
    metrics = config.metrics
    if metrics.tls is not None:
        metrics = replace(
            metrics,
            tls=replace(
                metrics.tls,
                cert_file=must(metrics.tls.cert_file),
                key_file=must(metrics.tls.key_file),
                client_ca_file=must(metrics.tls.client_ca_file),
            ),
        )
    return replace(config, tls=tls, backends=backends, metrics=metrics)


def build(bundle: Bundle, config: Config, crls: CRLLoader | None = None) -> Snapshot:
    """The TLS state of ``config`` (the bundle's, maybe adapted) from the bundle's bytes.

    The state's config keeps the real paths; its CRLs name their real files,
    and ``crls`` (the process's loader) remembers them as their last good
    content. Errors name the real files too, never the memory copies.
    """
    with _memory_files(bundle) as paths:
        real_of = {mem: real for real, mem in paths.items()}
        try:
            state = build_state(_remap(config, bundle, paths), crls)
        except KeyPathError as exc:
            message = exc.message
            for mem, real in real_of.items():
                message = message.replace(mem, real)
            raise type(exc)(exc.key, message) from None
    keys = {Path(paths[path]): (key, Path(path)) for key, path in bundle.crls if path in paths}

    def source(old: CRLSource) -> CRLSource:
        key, real = keys.get(old.path, (old.key, old.path))
        return CRLSource(key, real)

    revocation = state.revocation
    items = tuple(replace(item, source=source(item.source)) for item in revocation.crls)
    problems = tuple(
        replace(problem, source=source(problem.source)) for problem in revocation.problems
    )
    if crls is not None:
        crls.seed(items)
    checker = RevocationChecker(revocation.mode, items, revocation.cas, problems)
    return replace(state, config=config, revocation=checker)


def seed_passwords(bundle: Bundle, config: Config, store: dict[Path, PasswordsFile]) -> None:
    """Start each passwords file from the bundle's copy; it re-reads the disk when that changes."""
    for backend in config.backends.values():
        path = backend.auth.passwords_file
        if path is None or str(path) not in bundle.files:
            continue
        try:
            users = parse_userlist(bundle.files[str(path)].decode("utf-8"))
        except (UnicodeDecodeError, PasswordsFileError):
            continue
        stamp = bundle.stamps.get(str(path))
        # PasswordsFile's own stamp: (mtime, size, inode).
        own = (stamp[3], stamp[2], stamp[1]) if stamp is not None else None
        store[path] = PasswordsFile(path, own, users)
