"""The integration tests need the integration extras. Under CI=true a missing one fails (CI's second
stage installs them all); elsewhere the test is skipped with the install line."""

from __future__ import annotations

import importlib.util

import pytest
from services import IN_CI


@pytest.fixture(autouse=True)
def _integration_extras(request: pytest.FixtureRequest) -> None:
    for module, extra in getattr(request.module, "NEEDS", ()):
        if importlib.util.find_spec(module) is None:  # found, not imported: the test's processes import it
            if IN_CI:
                pytest.fail(f"CI=true but {module} is not installed (the '{extra}' extra)", pytrace=False)
            pytest.skip(f"needs {module}: pip install -e '.[{extra}]' (after torch==2.13.0)")
