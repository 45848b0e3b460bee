"""The C allocator's settings for long runs, set before the interpreter starts.

glibc's malloc returns freed memory to the kernel eagerly: a block above the mmap threshold is unmapped when freed, and
the heap's free top is trimmed once it exceeds the trim threshold. A simulator that searches and embeds in batches
frees and re-allocates blocks of megabytes thousands of times a run, and every one comes back as fresh pages the
kernel must fault in and zero: on the year timeline a third of the process's CPU time was system time. Keeping freed
memory in the process (a high mmap threshold, a high trim threshold, a padded heap top) removes it, for a resident
size about a fifth larger. Numbers do not change: only where memory comes from does (`benchmarks/allocator.py`
measures both sides and checks the results equal).

These settings are read when glibc initialises, so the command line sets them in its environment and starts itself
again once (`entry`); `mallopt` from a running interpreter reaches only part of the gain. Opt out with
`CVSTREAM_MALLOC=default`; a user who set any `MALLOC_*` variable or `GLIBC_TUNABLES` keeps the allocator as set.
"""

from __future__ import annotations

import os
import sys

SETTINGS = {  # glibc tunables as environment variables (see mallopt(3))
    "MALLOC_MMAP_THRESHOLD_": str(4 << 30),  # blocks below 4 GiB come from the heap, not from their own mapping
    "MALLOC_TRIM_THRESHOLD_": str(64 << 30),  # keep up to 64 GiB of free heap top instead of returning it
    "MALLOC_TOP_PAD_": str(256 << 20),  # grow the heap by 256 MiB at a time
}
OPT_OUT = "CVSTREAM_MALLOC"


def on_glibc() -> bool:
    """Whether this process runs on glibc (a system call away: no scan of the interpreter's binary)."""
    try:
        return os.confstr("CS_GNU_LIBC_VERSION").startswith("glibc")
    except (AttributeError, ValueError, OSError):  # no such confstr name: not glibc
        return False


def allocator_chosen(environ) -> bool:
    """Whether the user has set the C allocator up (any MALLOC_* variable, or GLIBC_TUNABLES): cvstream then leaves it."""
    return "GLIBC_TUNABLES" in environ or any(name.startswith("MALLOC_") for name in environ)


def tuned_environment(environ: dict[str, str] | None = None) -> dict[str, str] | None:
    """The environment to start the command line in, or None where it runs as it is: not glibc, opted out
    (`CVSTREAM_MALLOC=default`), or the allocator already set up (by this restart, or by the user)."""
    environ = dict(os.environ if environ is None else environ)
    if environ.get(OPT_OUT, "").lower() in ("default", "off", "0") or allocator_chosen(environ) or not on_glibc():
        return None
    return {**environ, **SETTINGS}


def restart_tuned(module: str) -> None:
    """Start `python -m module` again with the same arguments under the tuned allocator; returns where it should not."""
    environ = tuned_environment()
    if environ is None:
        return
    sys.stdout.flush()
    sys.stderr.flush()
    try:
        os.execve(sys.executable, [sys.executable, "-m", module, *sys.argv[1:]], environ)
    except OSError:  # no interpreter to start again (a frozen or embedded one): run with the allocator as it is
        return
