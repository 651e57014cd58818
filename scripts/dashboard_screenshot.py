"""Make docs/dashboard.png: a 5-node local federation running a job, one
node killed, the dashboard in headless chromium.

    .venv/bin/python scripts/dashboard_screenshot.py [--out docs/dashboard.png]
"""

from __future__ import annotations

import argparse
import sys
import threading
import time
from pathlib import Path

from playwright.sync_api import expect, sync_playwright

from moot.client.local import LocalFederation

REGIONS = ("lahore", "karachi", "singapore", "lahore", "karachi")


def slow_square(x: int) -> int:
    time.sleep(0.5)  # a task that takes a while, so the job is still running in the picture
    return x * x


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--out", type=Path, default=Path("docs/dashboard.png"))
    options = parser.parse_args()
    import cloudpickle

    cloudpickle.register_pickle_by_value(sys.modules[__name__])
    with LocalFederation(5, labels=[{"region": region} for region in REGIONS]) as federation:
        client = federation.client()
        futures = client.map(slow_square, range(400))
        with sync_playwright() as playwright:
            browser = playwright.chromium.launch(executable_path="/usr/bin/chromium", args=["--no-sandbox", "--headless"])
            page = browser.new_page(viewport={"width": 1500, "height": 1050})
            base = federation.nodes[0].http_url
            page.goto(base + "/login")
            page.fill("#token", federation.token)
            page.click("#submit")
            expect(page.locator("#members tbody tr[data-state='alive']")).to_have_count(5, timeout=20_000)
            threading.Timer(1.0, federation.kill, args=(4,)).start()
            expect(page.locator("#members tbody tr[data-state='dead']")).to_have_count(1, timeout=20_000)
            expect(page.locator("#timeline li.member_dead").first).to_be_visible(timeout=20_000)
            page.wait_for_timeout(1500)  # one more overview: the job's progress moved on
            options.out.parent.mkdir(parents=True, exist_ok=True)
            page.screenshot(path=str(options.out), full_page=True)
            browser.close()
        for future in futures:
            future.cancel()
    print(f"wrote {options.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
