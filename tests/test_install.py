"""`make install` keeps pip's pages in a log and prints its tail only when a step fails."""

from __future__ import annotations

import subprocess

import pytest

from conftest import REPO

# A stand-in python whose `-m venv DIR` makes a venv whose pip prints a page and exits with $FAKE_PIP_RC.
FAKE_PYTHON = """#!/bin/sh
mkdir -p "$3/bin"
cat > "$3/bin/pip" <<'PIP'
#!/bin/sh
i=0; while [ $i -lt 300 ]; do echo "Collecting package-$i"; i=$((i+1)); done
echo "pip's last words"
exit ${FAKE_PIP_RC:-0}
PIP
chmod +x "$3/bin/pip"
"""


@pytest.mark.parametrize("rc", [0, 1])
def test_make_install_is_quiet_and_shows_the_log_tail_on_failure(tmp_path, rc):
    fake = tmp_path / "python"
    fake.write_text(FAKE_PYTHON)
    fake.chmod(0o755)
    venv = tmp_path / "venv"
    done = subprocess.run(
        ["make", "-C", str(REPO), "install", f"PYTHON={fake}", f"VENV={venv}"],
        capture_output=True, text=True, timeout=120, env={"PATH": "/usr/bin:/bin", "FAKE_PIP_RC": str(rc)},
    )
    out = done.stdout + done.stderr
    log = (tmp_path / "venv-install.log").read_text()
    assert log.count("Collecting package-") >= 300  # everything pip said is kept
    if rc == 0:
        assert done.returncode == 0 and (venv / ".installed").exists()
        assert "Collecting" not in out and len(out.splitlines()) <= 3, out  # cvstream's line, not pip's page
    else:
        assert done.returncode != 0 and not (venv / ".installed").exists()
        assert "failed:" in out and "pip's last words" in out  # the tail says why
        assert len(out.splitlines()) < 60
