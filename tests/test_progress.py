"""Progress events on long transfers (the interval shortened for the test)."""

import time

from structlog.testing import capture_logs

from catalog_agent.transfer import Progress


def test_progress_event_reports_counts_at_each_interval() -> None:
    with capture_logs() as logs:
        with Progress(total_files=4, total_bytes=400, interval=0.05, bar=False) as progress:
            for _ in range(4):
                progress.add_bytes(100)
                progress.file_done()
                time.sleep(0.06)
    reports = [e for e in logs if e["event"] == "progress"]
    assert len(reports) >= 2
    assert reports[-1]["files_total"] == 4 and reports[-1]["bytes_total"] == 400
    assert all(0 <= r["bytes_done"] <= 400 for r in reports)
    assert [r["files_done"] for r in reports] == sorted(r["files_done"] for r in reports)
