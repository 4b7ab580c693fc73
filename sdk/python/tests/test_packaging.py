"""What `pip install ./sdk/python` installs: the package, its version, its type marker."""

from __future__ import annotations

import importlib.metadata
import os
from pathlib import Path

import pytest

import audit_manager_client


def test_installed_distribution() -> None:
    assert importlib.metadata.version("audit-manager-client") == audit_manager_client.__version__
    requires = importlib.metadata.requires("audit-manager-client") or []
    core = [r for r in requires if "extra ==" not in r]
    names = sorted(r.split(">")[0].split("<")[0] for r in core)
    assert names == ["anyio", "httpx"], "small: httpx (and anyio, which httpx uses too)"


def test_typed_marker_is_installed() -> None:
    assert (Path(audit_manager_client.__file__).parent / "py.typed").is_file()


@pytest.mark.skipif(not os.environ.get("SDK_EXPECT_INSTALLED"), reason="ci.sh sets it")
def test_tests_run_against_the_installed_copy() -> None:
    """ci.sh installs the package non-editable: the tests import that copy, not src/."""
    assert "site-packages" in audit_manager_client.__file__
