"""Stream setups, one module per family; each registers itself in `SETUPS` on import."""

from cvstream.sessions.setups import blurry, disjoint, explicit, few_shot, general  # noqa: F401
