"""The demo page and the dashboard in a real browser: headless Chromium driven by Selenium, the real service.

What a person would do, done by the browser: open ``/``, choose a real CIFAR-10
test image in the file input, read the answer off the page; choose a file that
is not an image, read the API's error on the page; open ``/dashboard`` while
shifted images stream in, and see the drift alarm appear.  The page's answer
is compared with what the API says about the same bytes, so the page cannot
show a different class, or a made-up one, and pass.

Debian's ``chromium`` and ``chromium-driver`` are the browser (nothing is
downloaded at test time).  ``make test REAL_TOOLS=1`` (what CI runs) installs
them when missing, and these tests then fail rather than skip without them.
Screenshots of each page land in the test's folder (the path is printed).
"""

from __future__ import annotations

import io
import json
import tarfile
import time
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from phase3_production.http_client import free_port, multipart, png_bytes, request, wait_until_ready
from phase3_production.p3_serve import start_server, stop_server
from tests.real_tools import tool

pytestmark = [getattr(pytest.mark, "p3-serve"), pytest.mark.slow]
WAIT_S = 20


@pytest.fixture(scope="module")
def browser():
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    options = webdriver.ChromeOptions()
    options.binary_location = tool("chromium")
    for flag in ("--headless=new", "--no-sandbox", "--disable-dev-shm-usage", "--disable-gpu",
                 "--window-size=1200,1100", "--disable-extensions", "--no-first-run"):
        options.add_argument(flag)
    options.set_capability("goog:loggingPrefs", {"browser": "ALL"})
    driver = webdriver.Chrome(service=Service(executable_path=tool("chromedriver")), options=options)
    driver.set_page_load_timeout(WAIT_S)
    try:
        yield driver
    finally:
        driver.quit()


def serve(model_dir, log: Path, **environment):
    port = free_port()
    process = start_server(model_dir, port, {k.upper(): str(v) for k, v in environment.items()}, log)
    try:
        wait_until_ready(port, process=process)
    except Exception:
        stop_server(process)
        raise
    return port, process


@pytest.fixture(scope="module")
def server(model_dir, tmp_path_factory):
    port, process = serve(model_dir, tmp_path_factory.mktemp("browser") / "server.log")
    try:
        yield port
    finally:
        stop_server(process)


def wait_for(driver, condition, what: str, timeout: float = WAIT_S):
    from selenium.webdriver.support.ui import WebDriverWait

    try:
        return WebDriverWait(driver, timeout, poll_frequency=0.1).until(lambda d: condition(d))
    except Exception as exc:
        raise AssertionError(f"the page never showed {what} within {timeout:.0f} s; "
                             f"it shows: {driver.find_element('tag name', 'main').text[:600]!r}") from exc


def page_problems(driver) -> list[str]:
    """Errors the page itself logged: a script that failed, a resource the policy blocked, a 404."""
    return [entry["message"] for entry in driver.get_log("browser") if entry["level"] == "SEVERE"]


def screenshot(driver, folder: Path, name: str) -> Path:
    path = folder / name
    driver.save_screenshot(str(path))
    print(f"screenshot: {path}")
    return path


def api_answer(port: int, data: bytes, filename: str, content_type: str):
    body, header = multipart([("file", filename, data, content_type)])
    return request(port, "POST", "/v1/predict", body, {"content-type": header})


def a_real_cifar10_test_image(root: Path) -> tuple[bytes, str, str]:
    """(file bytes, true label, file name) of one CIFAR-10 test image as the data folder holds it."""
    for folder in (root / "cifar10-jpeg" / "test", root / "cifar10" / "test"):
        if folder.is_dir():
            path = sorted(next(p for p in sorted(folder.iterdir()) if p.is_dir()).iterdir())[0]
            return path.read_bytes(), path.parent.name, path.name
    archive = root / "cifar10-jpeg.tar.gz"
    if archive.is_file():   # the test split comes first in the archive: stop at its first image
        with tarfile.open(archive, "r:gz") as tar:
            for member in tar:
                parts = Path(member.name).parts
                if member.isfile() and "test" in parts:
                    return tar.extractfile(member).read(), parts[-2], parts[-1]
    batch = root / "cifar-10-batches-py" / "test_batch"
    if batch.is_file():
        from common.formats import read_cifar_batch
        from common.data import CIFAR10_CLASSES

        images, labels = read_cifar_batch(batch)
        return png_bytes(images[0]), CIFAR10_CLASSES[int(labels[0])], "test0.png"
    raise AssertionError(f"no CIFAR-10 test image under {root} (cifar10-jpeg/, cifar10-jpeg.tar.gz or "
                         "cifar-10-batches-py/)")


def choose_file(driver, path: Path) -> None:
    """What a person does with the file dialog: the file input gets the path."""
    driver.execute_script("document.body.dataset.state = 'choosing'")
    driver.find_element("id", "file").send_keys(str(path))


# --------------------------------------------------------------------------- the demo page


@pytest.mark.real_data
def test_a_real_cifar10_image_chosen_on_the_page_shows_the_api_s_class(browser, server, real_data_dir, tmp_path):
    data, label, name = a_real_cifar10_test_image(real_data_dir)
    upload = tmp_path / name
    upload.write_bytes(data)
    expected = api_answer(server, data, name, "image/jpeg" if name.endswith(".jpg") else "image/png")
    assert expected.status == 200, expected.body[:300]
    expected = expected.json()

    browser.get(f"http://127.0.0.1:{server}/")
    wait_for(browser, lambda d: len(d.find_elements("css selector", "#samples .sample")) == 10, "the 10 samples")
    choose_file(browser, upload)
    wait_for(browser, lambda d: d.find_element("tag name", "body").get_attribute("data-state") == "answered",
             "an answer")
    assert browser.find_element("id", "top1").text == expected["class"]
    rows = [row.text.split("\n") for row in browser.find_elements("css selector", "#top3 li")]
    top3 = sorted(expected["probabilities"].items(), key=lambda kv: -kv[1])[:3]
    assert [r[0] for r in rows] == [c for c, _ in top3]
    assert [r[-1] for r in rows] == [f"{100 * p:.1f}%" for _, p in top3]
    widths = [float(e.get_attribute("style").split("width:")[1].split("%")[0])
              for e in browser.find_elements("css selector", "#top3 .fill")]
    assert widths == [float(f"{100 * p:.1f}") for _, p in top3]   # the page writes toFixed(1), as the labels
    model = request(server, "GET", "/v1/model").json()
    assert browser.find_element("id", "model-sha256").text == model["sha256"]
    assert "ms in the browser" in browser.find_element("id", "timing").text
    assert page_problems(browser) == []
    screenshot(browser, tmp_path, "demo.png")
    print(f"a real test image of a {label}: the page and the API both say {expected['class']}")


def test_a_file_that_is_not_an_image_shows_the_api_s_error(browser, server, tmp_path):
    upload = tmp_path / "notes.png"
    upload.write_bytes(b"these are my notes, not a picture\n" * 20)
    expected = api_answer(server, upload.read_bytes(), upload.name, "image/png")
    assert expected.status == 400
    message = expected.json()["error"]["message"]

    browser.get(f"http://127.0.0.1:{server}/")
    choose_file(browser, upload)
    wait_for(browser, lambda d: d.find_element("id", "error").is_displayed(), "the error")
    shown = browser.find_element("id", "error").text
    assert message in shown and "HTTP 400" in shown
    assert not browser.find_element("id", "result").is_displayed()
    # the browser logs the 400 itself; nothing else went wrong on the page
    assert [p for p in page_problems(browser) if "/v1/predict" not in p or "400" not in p] == []
    screenshot(browser, tmp_path, "demo-error.png")


def test_a_sample_clicked_on_the_page_is_classified_like_its_bytes(browser, server):
    browser.get(f"http://127.0.0.1:{server}/")
    wait_for(browser, lambda d: len(d.find_elements("css selector", "#samples .sample")) == 10, "the samples")
    sample = request(server, "GET", "/v1/samples").json()["samples"][3]
    import base64

    expected = api_answer(server, base64.b64decode(sample["png_base64"]), "x.png", "image/png").json()
    browser.find_elements("css selector", "#samples .sample")[3].click()
    wait_for(browser, lambda d: d.find_element("tag name", "body").get_attribute("data-state") == "answered",
             "an answer")
    assert browser.find_element("id", "top1").text == expected["class"]
    assert page_problems(browser) == []


# --------------------------------------------------------------------------- the dashboard


def noise_pngs(count: int, seed: int, *, shifted: bool) -> list[bytes]:
    """Images like the test model's drift reference (uniform noise), or shifted: bright and washed out."""
    rng = np.random.default_rng(seed)
    images = rng.integers(0, 256, (count, 3, 32, 32)).astype(np.float32)
    if shifted:
        images = 190 + images * 0.25
    return [png_bytes(np.clip(image, 0, 255).astype(np.uint8)) for image in images]


def send(port: int, images: list[bytes]) -> None:
    for data in images:
        reply = request(port, "POST", "/v1/predict", data, {"content-type": "image/png"})
        assert reply.status == 200, reply.body[:200]


def test_the_dashboard_shows_the_traffic_and_raises_the_drift_alarm(browser, model_dir, tmp_path):
    port, process = serve(model_dir, tmp_path / "server.log", drift_window=50, drift_check_every=10)
    try:
        browser.get(f"http://127.0.0.1:{port}/dashboard")
        banner = lambda d: d.find_element("id", "drift-status")   # noqa: E731
        wait_for(browser, lambda d: banner(d).get_attribute("data-alarm") == "unknown", "the drift monitor waiting")
        send(port, noise_pngs(60, seed=1, shifted=False))
        wait_for(browser, lambda d: banner(d).get_attribute("data-alarm") == "false", "a passed drift check")
        assert banner(browser).text.startswith("No drift")
        calm = json.loads(request(port, "GET", "/v1/stats").body)
        assert calm["drift"]["history"] and not any(h["alarm"] for h in calm["drift"]["history"])

        send(port, noise_pngs(60, seed=2, shifted=True))
        wait_for(browser, lambda d: banner(d).get_attribute("data-alarm") == "true", "the drift alarm")
        assert banner(browser).text.startswith("DRIFT ALARM after 120 requests")
        # the tiles show this traffic: 120 answers in the last minute, latencies, no errors
        wait_for(browser, lambda d: d.find_element("id", "rate").text not in ("-", "0.0"), "a request rate")
        assert browser.find_element("id", "p95").text.endswith("ms")
        assert browser.find_element("id", "errors-5xx").text == "0"
        assert browser.find_element("id", "shed-503").text == "0"
        drift_rows = browser.find_elements("css selector", "#drift-tests tbody tr")
        assert len(drift_rows) == 9                     # 8 KS tests and the class mix
        assert page_problems(browser) == []
        screenshot(browser, tmp_path, "dashboard.png")
    finally:
        stop_server(process)
