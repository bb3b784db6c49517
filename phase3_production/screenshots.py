"""Pictures of the service's pages, taken by a headless Chromium from the command line.

``chromium --headless --screenshot=demo.png URL`` loads the page, lets its
scripts run for a while of *virtual* time (``--virtual-time-budget``: the
browser fast-forwards timers and waits for the network, so a page that fetches
and draws is finished in the picture), and writes a PNG.  No driver, no
Python package: the browser alone.  p3-serve's self-test uses it (:func:`take_pages`) to leave
``demo.png`` and ``dashboard.png`` in its run folder, p3-monitor its ``dashboard.png``; the browser tests
(``tests/test_p3_browser.py``) drive the same pages through Selenium.

Without a Chromium on the PATH nothing is taken and the caller says so.
"""

from __future__ import annotations

import shutil
# bandit B404: the browser runs from a fixed argument list, never through a shell
import subprocess  # nosec B404
from pathlib import Path

BROWSERS = ("chromium", "chromium-browser", "google-chrome", "google-chrome-stable")


def find_browser() -> str | None:
    return next((path for name in BROWSERS if (path := shutil.which(name))), None)


def screenshot(url: str, path: Path, *, width: int = 1100, height: int = 900, wait_ms: int = 4000,
               browser: str | None = None) -> Path:
    """Load ``url`` in headless Chromium and save what it shows to ``path`` (PNG); the path, or an error."""
    browser = browser or find_browser()
    if browser is None:
        raise FileNotFoundError(f"no Chromium found (looked for {', '.join(BROWSERS)}); "
                                "`sudo apt-get install chromium` gives one")
    path = Path(path).resolve()
    command = [browser, "--headless=new", "--no-sandbox", "--disable-gpu", "--hide-scrollbars",
               "--no-first-run", f"--window-size={width},{height}", f"--virtual-time-budget={wait_ms}",
               f"--screenshot={path}", url]
    # bandit B603: a browser found on the PATH and fixed flags; the URL is the local service's
    done = subprocess.run(command, capture_output=True, text=True, timeout=120)  # nosec B603
    if done.returncode != 0 or not path.is_file():
        raise RuntimeError(f"{Path(browser).name} could not take {path.name} (exit {done.returncode}): "
                           f"{done.stderr.strip()[-500:]}")
    return path


def take_pages(pages: dict[str, tuple[str, int]], folder: Path) -> dict:
    """Photograph each ``{file name: (url, height)}`` into ``folder``: ``{"files": [...]}``, and ``"skipped"``
    with the reason when there is no Chromium or it fails (a run goes on without its pictures, and says so)."""
    taken = []
    try:
        for name, (url, height) in pages.items():
            taken.append(screenshot(url, Path(folder) / name, height=height).name)
            print(f"  {name}: {url}")
    except (FileNotFoundError, RuntimeError, OSError, subprocess.SubprocessError) as exc:
        print(f"  no screenshots: {exc}")
        return {"files": taken, "skipped": str(exc)}
    return {"files": taken}
