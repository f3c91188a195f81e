"""Fixtures of the driver tests (helpers in tests/drivers/frontend.py)."""

from __future__ import annotations

import pytest

from tests.drivers.frontend import FrontEnd, make_frontend


@pytest.fixture
def frontend(tmp_path, storpool_sandbox) -> FrontEnd:
    fe = make_frontend(tmp_path / "fe", storpool_sandbox)
    fe.sp.volume_template_create("one-ds-100", replication=3)
    return fe
