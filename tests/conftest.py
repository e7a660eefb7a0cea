"""Settings every test shares."""

from __future__ import annotations

import pytest
from hypothesis import HealthCheck, settings

from keyforge.config import STATE_ENV

# Speed is measured by the benchmarks, never asserted by a test: hypothesis's per-example
# deadline would turn a busy machine into a failure, so it is off.
settings.register_profile("keyforge", deadline=None, suppress_health_check=[HealthCheck.too_slow])
settings.load_profile("keyforge")


@pytest.fixture(autouse=True)
def _private_state_dir(
    tmp_path_factory: pytest.TempPathFactory, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Each test remembers its own pushes: never the machine's /var/lib/keyforge."""
    monkeypatch.setenv(STATE_ENV, str(tmp_path_factory.mktemp("state")))
