"""Every test under tests/integration/ carries the ``integration`` marker.

Set here once rather than per file, so a new file cannot forget it and
``-m integration`` / ``-m "not integration"`` select exactly this directory.
"""

from __future__ import annotations

from pathlib import Path

import pytest

_HERE = Path(__file__).parent


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    for item in items:
        if item.path.is_relative_to(_HERE):
            item.add_marker(pytest.mark.integration)
