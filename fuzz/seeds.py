"""Write seed corpora of valid exchanges for each harness: ``python -m fuzz.seeds DIR``.

Coverage-guided fuzzing finds the deep paths far sooner from inputs that
already pass the parsers; these are built from the product's own encoders
each time, so nothing generated is committed.
"""

from __future__ import annotations

import hashlib
import sys
from pathlib import Path

from fuzz import fuzz_login, fuzz_proxyproto, fuzz_startup


def write(directory: Path, seeds: list[bytes]) -> int:
    directory.mkdir(parents=True, exist_ok=True)
    for seed in seeds:
        (directory / f"seed-{hashlib.sha1(seed).hexdigest()}").write_bytes(seed)
    return len(seeds)


def main() -> None:
    root = Path(sys.argv[1] if len(sys.argv) > 1 else "fuzz/corpus")
    for name, seeds in (
        ("startup", fuzz_startup.seeds()),
        ("proxyproto", fuzz_proxyproto.seeds()),
        ("login", fuzz_login.seeds()),
    ):
        print(f"{root / name}: {write(root / name, seeds)} seeds")


if __name__ == "__main__":
    main()
