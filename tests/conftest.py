"""Settings every test shares."""

from __future__ import annotations

from hypothesis import HealthCheck, settings

# Speed is measured by the benchmarks, never asserted by a test: hypothesis's per-example
# deadline would turn a busy machine into a failure, so it is off.
settings.register_profile("keyforge", deadline=None, suppress_health_check=[HealthCheck.too_slow])
settings.load_profile("keyforge")
