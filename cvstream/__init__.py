"""cvstream: a continual visual-search simulator for session streams."""

__version__ = "0.1.0"

from cvstream.errors import UserError  # noqa: E402
from cvstream.scenario import Scenario  # noqa: E402


def __getattr__(name):
    # The simulator pulls in torch and faiss; import it only when asked for.
    if name in {"Simulator", "RunResult", "load_run"}:
        from cvstream import simulator

        return getattr(simulator, name)
    raise AttributeError(name)


__all__ = ["Scenario", "Simulator", "RunResult", "load_run", "UserError", "__version__"]
