"""The service timeline (SPEC section 11), on SimPy: it drives the session engine from above, one session at a time."""

from cvstream.timeline.driver import run, run_timeline
from cvstream.timeline.service import Timeline, TimelineResult

__all__ = ["Timeline", "TimelineResult", "run", "run_timeline"]
