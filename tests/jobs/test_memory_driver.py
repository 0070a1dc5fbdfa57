"""The in-memory driver passes the driver contract."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
from contract import DriverContract


class TestMemoryDriver(DriverContract):
    @pytest.fixture
    def pipeline_settings(self, tmp_path: Path) -> dict[str, Any]:
        return {"driver": "memory"}
