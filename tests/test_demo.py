"""The README's first command: the demo runs a two-step pipeline and cleans up."""

import os
import subprocess
import sys


def test_demo_puts_gets_and_prints_the_manifest(tmp_path) -> None:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("AWS_", "CATALOG_AGENT_"))}
    env["TMPDIR"] = str(tmp_path)
    done = subprocess.run([sys.executable, "-m", "catalog_agent", "demo"], env=env,
                          capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stdout + done.stderr
    assert '"catalog_relative_path": "demo-run-1/raw/day-1.csv"' in done.stdout
    assert "step 'train' received: raw/day-1.csv, raw/day-2.csv, raw/day-3.csv, summary.txt" \
        in done.stdout
    last = done.stdout.rstrip().splitlines()[-5:]  # it ends by saying where to go next
    assert last[0] == "next, in the repository:"
    assert 'README.md "A complete Job"' in last[1] and "examples/job" in last[1]
    assert "catalog-agent config --check" in last[2]
    assert "docs/configuration.md" in last[4]
    assert list(tmp_path.iterdir()) == []  # the server's folder and the work folder are gone
