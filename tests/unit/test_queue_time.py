"""X-Request-Start as proxies send it (protocols/queue_time.py)."""

from __future__ import annotations

import pytest

from greenserve.worker.protocols.queue_time import waited

NOW = 1_790_000_000.0


class TestForms:
    """Heroku's and New Relic's units, told apart by size; bad values are named, not raised."""

    @pytest.mark.parametrize(
        "header",
        [
            f"t={int((NOW - 0.25) * 1e6)}",  # New Relic: microseconds
            f"t={int((NOW - 0.25) * 1e3)}",  # milliseconds
            f"{int((NOW - 0.25) * 1e3)}",  # Heroku: a bare number of milliseconds
            f"t={NOW - 0.25:.3f}",  # nginx t=${{msec}}: seconds with a fraction
            f" T={NOW - 0.25:.3f} ",
        ],
    )
    def test_a_quarter_second(self, header):
        assert waited(header, NOW) == pytest.approx(0.25, abs=0.002)

    @pytest.mark.parametrize("header", ["", "t=", "t=abc", "t=-5", "t=0", "t=inf", "t=nan", "1,2"])
    def test_malformed(self, header):
        assert waited(header, NOW) == "malformed"

    def test_a_clock_ahead_is_skew_up_to_a_second_then_future(self):
        assert waited(f"t={NOW + 0.5:.3f}", NOW) == 0.0
        assert waited(f"t={NOW + 5:.3f}", NOW) == "future"
