"""The review page in a real headless Chromium (Selenium): ``search.py --serve`` started as a
user would, a photo uploaded through the file input, its matches seen, one confirmed, and the
photo found enrolled in the saved gallery. Page load times are measured in the browser and
printed, never asserted. Skips, saying why, where Chromium or its driver is not installed
(Debian: ``apt-get install chromium chromium-driver``; ``.ci/run`` installs them).

``REVIEW_SHOTS=DIR`` saves screenshots of each page there (outside the repository).
"""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest
from review_helpers import colour_photo, fresh_copy, trained_workdir

from retrieval.serving.gallery import Gallery

REPO = Path(__file__).resolve().parents[1]
BROWSERS = ("chromium", "chromium-browser", "google-chrome")


def _browser() -> tuple[str, str]:
    browser = next((found for name in BROWSERS if (found := shutil.which(name))), None)
    driver = shutil.which("chromedriver")
    if browser is None or driver is None:
        missing = "chromium" if browser is None else "chromedriver"
        pytest.skip(
            f"no {missing} on PATH: install Debian's chromium and chromium-driver "
            "(apt-get install chromium chromium-driver) to run the browser test"
        )
    return browser, driver


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _wait_until_up(url: str, server: subprocess.Popen, timeout_s: float = 120) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if server.poll() is not None:
            pytest.fail(f"search.py --serve exited: {server.stdout.read()}")
        try:
            urllib.request.urlopen(url, timeout=2).close()
            return
        except OSError:
            time.sleep(0.3)
    pytest.fail(f"search.py --serve did not answer on {url} within {timeout_s:.0f} s")


@pytest.fixture(scope="module")
def served(tmp_path_factory):
    """(base URL, workdir, photos folder) of a real ``search.py --serve`` subprocess."""
    _browser()
    root = tmp_path_factory.mktemp("browser")
    workdir = fresh_copy(trained_workdir(root / "train"), root)
    photos = root / "photos"
    colour_photo(photos / "green_new.png", "green", seed=811)
    port = _free_port()
    argv = [sys.executable, "search.py", "--serve", "--workdir", str(workdir)]
    argv += ["--port", str(port), "--folder", str(photos), "--local_match", "off"]
    server = subprocess.Popen(
        [*argv, "--device", "cpu"],
        cwd=REPO,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    base = f"http://127.0.0.1:{port}"
    try:
        _wait_until_up(base + "/", server)
        yield base, workdir, photos
    finally:
        server.terminate()
        server.wait(timeout=30)


@pytest.fixture(scope="module")
def driver(served):
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    browser, chromedriver = _browser()
    options = webdriver.ChromeOptions()
    options.binary_location = browser
    for flag in ("--headless=new", "--no-sandbox", "--disable-dev-shm-usage"):
        options.add_argument(flag)  # no sandbox: CI runs as root
    options.add_argument("--window-size=1280,1000")
    chrome = webdriver.Chrome(service=Service(chromedriver), options=options)
    chrome.set_page_load_timeout(60)
    yield chrome
    chrome.quit()


def _load_ms(driver) -> float:
    """The page's load time as the browser measured it (navigation start to load event)."""
    return driver.execute_script(
        "const n = performance.getEntriesByType('navigation')[0]; return n.loadEventEnd;"
    )


def _shot(driver, name: str) -> None:
    folder = os.environ.get("REVIEW_SHOTS")
    if folder:
        Path(folder).mkdir(parents=True, exist_ok=True)
        driver.save_screenshot(str(Path(folder) / f"{name}.png"))


def test_upload_see_matches_confirm_and_find_it_enrolled(served, driver):
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support import expected_conditions as ready
    from selenium.webdriver.support.ui import WebDriverWait

    base, workdir, photos = served
    wait = WebDriverWait(driver, 60)
    driver.get(base + "/")
    print(f"\nqueue page (empty) load: {_load_ms(driver):.0f} ms")
    _shot(driver, "1_queue_empty")

    driver.find_element(By.ID, "photos").send_keys(str(photos / "green_new.png"))
    driver.find_element(By.ID, "upload").click()
    wait.until(ready.presence_of_element_located((By.ID, "verdict")))
    print(f"answer page load (upload answered, then redirected): {_load_ms(driver):.0f} ms")
    matches = driver.find_elements(By.CSS_SELECTOR, "#matches li")
    assert len(matches) == 5
    assert "green" in matches[0].text
    _shot(driver, "2_answer")

    driver.find_element(By.ID, "confirm").click()
    wait.until(ready.text_to_be_present_in_element((By.ID, "actions"), "confirmed"))
    _shot(driver, "3_confirmed")
    photo = next((workdir / "review" / "photos").glob("*.png"))
    gallery = Gallery.load(workdir / "gallery")
    enrolled = {
        p: gallery.class_names[gallery.labels_by_id[i]]
        for i, p in enumerate(gallery.paths_by_id)
        if p
    }
    assert enrolled.get(str(photo.resolve())) == "green"

    driver.get(base + "/")
    print(f"queue page (1 answer) load: {_load_ms(driver):.0f} ms")
    assert "confirmed: green" in driver.find_element(By.CSS_SELECTOR, "table.queue").text
    _shot(driver, "4_queue")
    driver.find_element(By.CSS_SELECTOR, "table.queue a").click()
    driver.find_element(By.CSS_SELECTOR, "#matches li a").click()
    wait.until(ready.presence_of_element_located((By.ID, "compare-match")))
    _shot(driver, "5_compare")
    driver.get(base + "/dashboard")
    print(f"dashboard load: {_load_ms(driver):.0f} ms")
    _shot(driver, "6_dashboard")
