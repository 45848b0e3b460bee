"""cvstream: a continual visual-search simulator for session streams."""

__version__ = "0.1.0"

from cvstream.errors import UserError  # noqa: E402


def __getattr__(name):
    # The scenario and the simulator pull in torch and faiss, and importing a lower package
    # (cvstream.gallery, say) must not import them: each is imported only when asked for.
    if name == "Scenario":
        from cvstream.scenario import Scenario

        return Scenario
    if name in {"Simulator", "RunResult", "load_run"}:
        from cvstream import simulator

        return getattr(simulator, name)
    raise AttributeError(name)


__all__ = ["Scenario", "Simulator", "RunResult", "load_run", "UserError", "__version__"]
