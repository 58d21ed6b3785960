"""The supervisor's copy of the last configuration and files that loaded."""

from __future__ import annotations

import shutil
from pathlib import Path
from typing import Any

import pytest
import yaml

from pgtls_proxy.bundle import Bundle, build, capture_from_disk, refresh, seed_passwords
from pgtls_proxy.config import ConfigError
from pgtls_proxy.passwords import PasswordsFile
from pgtls_proxy.pki.contexts import TLSConfigError
from pgtls_proxy.pki.revocation import CRLLoader
from pgtls_proxy.secretfiles import InsecureFileError
from pgtls_proxy.watch import snapshot
from tests.fixtures.pki import PKIFiles
from tests.fixtures.proxy import base_config, deep_merge


def _setup(pki: PKIFiles, tmp: Path, **extra: Any) -> Path:
    own = tmp / "files"
    own.mkdir()
    for src in (pki.server_cert, pki.server_key, pki.ca):
        shutil.copy2(src, own / src.name)
    (own / "crls").mkdir()
    shutil.copy2(pki.crl, own / "crls" / pki.crl.name)
    userlist = own / "userlist.txt"
    userlist.write_text('"alice" "s3cret"\n')
    userlist.chmod(0o600)
    data = deep_merge(
        base_config(pki, 5432),
        {
            "tls": {
                "cert_file": "files/localhost.crt",
                "key_file": "files/localhost.key",
                "client_ca_file": "files/ca.crt",
                "crl_files": None,
                "crl_dir": "files/crls",
            },
            "backends": {"main": {"auth": {"passwords_file": "files/userlist.txt"}}},
            **extra,
        },
    )
    del data["tls"]["crl_files"]
    path = tmp / "proxy.yaml"
    path.write_text(yaml.safe_dump(data))
    return path


def test_a_bundle_builds_with_every_file_gone(pki: PKIFiles, tmp_path: Path) -> None:
    path = _setup(pki, tmp_path)
    bundle, state = capture_from_disk(path)
    copy = Bundle.decode(bundle.encode())
    assert copy == bundle
    shutil.rmtree(tmp_path / "files")
    path.write_text("broken: [yaml\n")
    loader = CRLLoader()
    config = copy.parse()
    rebuilt = build(copy, config, loader)
    # The config keeps the real paths, and the CRLs name their real files.
    assert rebuilt.config.tls.client_ca_file == tmp_path / "files" / "ca.crt"
    assert [item.source.path for item in rebuilt.revocation.crls] == [
        tmp_path / "files" / "crls" / "crl.pem"
    ]
    assert [item.source.key for item in rebuilt.revocation.crls] == ["tls.crl_dir"]
    assert not rebuilt.revocation.problems
    assert rebuilt.server_cert_not_after == state.server_cert_not_after
    # The watcher sees the files as they were when copied: gone now is a change.
    assert copy.snapshot(config) != snapshot(config)
    # The loader remembers the copied CRL for its real file: still in force
    # when the disk has none (the directory is gone).
    (tmp_path / "files" / "crls").mkdir(parents=True)
    (tmp_path / "files" / "crls" / "crl.pem").write_text("junk\n")
    crls, problems = loader.load(config.tls, rebuilt.revocation.cas)
    assert len(crls) == 1 and problems and problems[0].kept
    # Passwords start from the copy too.
    store: dict[Path, PasswordsFile] = {}
    seed_passwords(copy, config, store)
    assert store[tmp_path / "files" / "userlist.txt"].lookup("alice") == "s3cret"


def test_errors_name_the_real_files_never_the_memory_copies(pki: PKIFiles, tmp_path: Path) -> None:
    path = _setup(pki, tmp_path)
    key = tmp_path / "files" / "localhost.key"
    key.write_text("not a key\n")
    with pytest.raises(TLSConfigError) as info:
        capture_from_disk(path)
    assert str(key) in str(info.value) and "/proc/self/fd" not in str(info.value)
    key.unlink()
    with pytest.raises(TLSConfigError) as info:
        capture_from_disk(path)
    assert f"cannot read {key}" in str(info.value)


def test_capture_refuses_secret_files_others_can_read(pki: PKIFiles, tmp_path: Path) -> None:
    path = _setup(pki, tmp_path)
    (tmp_path / "files" / "userlist.txt").chmod(0o644)
    with pytest.raises(InsecureFileError) as info:
        capture_from_disk(path)
    assert info.value.key == "backends.main.auth.passwords_file"
    path.write_text("nope: [\n")
    with pytest.raises(ConfigError):
        capture_from_disk(path)


def test_a_crl_that_turned_bad_keeps_its_copied_bytes(pki: PKIFiles, tmp_path: Path) -> None:
    path = _setup(pki, tmp_path)
    first, _ = capture_from_disk(path)
    crl = tmp_path / "files" / "crls" / "crl.pem"
    crl.write_text("junk\n")
    config = first.parse()
    second, state = refresh(config, first.config, first)
    assert second.files[str(crl)] == first.files[str(crl)]
    assert not state.revocation.problems
    assert second.stamps[str(crl)] != first.stamps[str(crl)]  # the watcher saw the change


def test_a_crl_file_gone_from_crl_dir_is_a_change(pki: PKIFiles, tmp_path: Path) -> None:
    path = _setup(pki, tmp_path)
    bundle, _ = capture_from_disk(path)
    config = bundle.parse()
    assert bundle.snapshot(config) == snapshot(config)
    (tmp_path / "files" / "crls" / "crl.pem").unlink()
    assert bundle.snapshot(config) != snapshot(config)
