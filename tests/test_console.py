"""The operator console and Swagger UI in a real headless Chromium, against a real gateway.

A gateway with admin keys runs an A/B experiment with a real effect (the treatment's model
is 15 ms slower) and an A/A one, driven by clients that send many requests per unit. The
test logs in with the admin key, loads every console page, checks every number the page
shows against the JSON API, watches the page update without a reload, clicks stop and
resume, writes a self-contained report with the CLI and checks it the same way, and loads
Swagger UI with no network beyond the gateway. Screenshots go to ``tests/artifacts/``.
"""

from __future__ import annotations

import asyncio
import json
import shutil
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from .support import ROOT, GatewayProcess

webdriver = pytest.importorskip("selenium.webdriver")
from selenium.common.exceptions import (  # noqa: E402
    StaleElementReferenceException,
    TimeoutException,
)
from selenium.webdriver.common.by import By  # noqa: E402
from selenium.webdriver.remote.webdriver import WebDriver  # noqa: E402
from selenium.webdriver.support.ui import WebDriverWait  # noqa: E402

pytestmark = pytest.mark.skipif(
    not (shutil.which("chromium") and shutil.which("chromedriver")),
    reason="needs Debian's chromium and chromium-driver (make chromium)",
)

ARTIFACTS = ROOT / "tests" / "artifacts"
ADMIN_KEY = "console-admin-key"

POLICY = """
version: 1
models:
  m:
    versions:
      "1": {backend: local, kind: fake, device: cpu, dim: 8, seed: 1, latency_ms: 1}
      "2": {backend: local, kind: fake, device: cpu, dim: 8, seed: 2, latency_ms: 16}
  n:
    versions:
      "1": {backend: local, kind: fake, device: cpu, dim: 8, seed: 3, latency_ms: 1}
      "2": {backend: local, kind: fake, device: cpu, dim: 8, seed: 3, latency_ms: 1}
    labels: {stable: "1"}
routes:
  - name: same
    match: {model: n}
    model: n
    cache: {ttl_s: 0}
  - name: text
    match: {modality: [text]}
    model: m
    cache: {ttl_s: 0}
experiments:
  ab:
    route: text
    arms:
      control: {version: "1", weight: 50}
      treatment: {version: "2", weight: 50}
  aa:
    route: same
    arms:
      a: {version: "1", weight: 50}
      b: {version: "2", weight: 50}
"""


@pytest.fixture(scope="module")
def gateway(tmp_path_factory: pytest.TempPathFactory) -> Iterator[GatewayProcess]:
    folder = tmp_path_factory.mktemp("console")
    policy = folder / "policy.yaml"
    policy.write_text(POLICY)
    proc = GatewayProcess(
        policy, data_dir=folder, env={"PRISM_ADMIN_KEYS": json.dumps([ADMIN_KEY])}
    ).start()
    try:
        yield proc
    finally:
        proc.stop()


@pytest.fixture(scope="module")
def browser() -> Iterator[WebDriver]:
    options = webdriver.ChromeOptions()
    options.binary_location = shutil.which("chromium") or "chromium"
    for flag in ("--headless=new", "--no-sandbox", "--disable-dev-shm-usage", "--disable-gpu"):
        options.add_argument(flag)
    options.add_argument("--window-size=1280,1600")
    service = webdriver.ChromeService(executable_path=shutil.which("chromedriver"))
    driver = webdriver.Chrome(options=options, service=service)
    try:
        yield driver
    finally:
        driver.quit()


def drive(url: str, units: range, per_unit: int) -> None:
    """Many requests per unit, to both experiments, a few units at a time."""

    async def one_unit(client: httpx.AsyncClient, u: int) -> None:
        for i in range(per_unit):
            for body in (
                {"inputs": [{"text": f"q{u}-{i}"}], "routing": {"unit": f"user-{u}"}},
                {"model": "n", "inputs": [{"text": f"q{u}-{i}"}], "routing": {"unit": f"user-{u}"}},
            ):
                r = await client.post("/v1/infer", json=body)
                assert r.status_code == 200, r.text

    async def run() -> None:
        # keys are on (an admin key is set), so model traffic carries one too
        headers = {"authorization": f"Bearer {ADMIN_KEY}"}
        async with httpx.AsyncClient(base_url=url, timeout=30, headers=headers) as client:
            for start in range(units.start, units.stop, 8):
                await asyncio.gather(
                    *(one_unit(client, u) for u in range(start, min(start + 8, units.stop)))
                )

    asyncio.run(run())


def admin(url: str, path: str, method: str = "GET") -> Any:
    r = httpx.request(method, url + path, headers={"authorization": f"Bearer {ADMIN_KEY}"})
    assert r.status_code == 200, r.text
    return r.json()


def waiting(driver: WebDriver, timeout_s: float) -> WebDriverWait[WebDriver]:
    """A wait that reads the page again when it redrew under a check: the console replaces
    its tables every 2 s, so an element found a moment ago can be gone when it is read."""
    return WebDriverWait(driver, timeout_s, ignored_exceptions=(StaleElementReferenceException,))


def wait_refreshed(driver: WebDriver, after: int = 0, timeout_s: float = 20) -> int:
    """Wait until the page has drawn data more than ``after`` times; the count."""

    def count(d: WebDriver) -> int:
        raw = d.find_element(By.TAG_NAME, "body").get_attribute("data-refreshes")
        return int(raw) if raw and int(raw) > after else 0

    return int(waiting(driver, timeout_s).until(count))


def lookup(doc: Any, path: list[Any]) -> Any:
    for step in path:
        doc = doc[step]
    return doc


def shown_numbers(driver: WebDriver) -> list[tuple[str, list[Any], str]]:
    """(source, path, text) of every value the page shows from the API, read in one go (the
    page redraws itself every two seconds)."""
    rows = driver.execute_script(
        "return [...document.querySelectorAll('[data-src][data-path]')]"
        ".map(n => [n.dataset.src, n.dataset.path, n.textContent])"
    )
    return [(src, json.loads(path), text) for src, path, text in rows]


def same(text: str, value: Any) -> bool:
    if value is None:
        return text == "\u2013"  # an en dash: no value yet
    if isinstance(value, list):
        return text == ", ".join(map(str, value))
    if isinstance(value, bool | str):
        return text == str(value)
    return float(text) == pytest.approx(float(value), abs=0, rel=0)


def check_against_api(driver: WebDriver, docs: dict[str, Any]) -> int:
    numbers = shown_numbers(driver)
    assert numbers, "the page shows no numbers"
    for source, path, text in numbers:
        value = lookup(docs[source], path)
        assert same(text, value), f"{source} {path}: page {text!r}, API {value!r}"
    return len(numbers)


def screenshot(driver: WebDriver, name: str) -> None:
    ARTIFACTS.mkdir(exist_ok=True)
    driver.save_screenshot(str(ARTIFACTS / f"console-{name}.png"))


def login(driver: WebDriver, url: str) -> None:
    driver.get(url + "/console/experiments")
    box = waiting(driver, 20).until(lambda d: d.find_element(By.ID, "key"))
    screenshot(driver, "login")
    box.send_keys(ADMIN_KEY)
    driver.find_element(By.ID, "save-key").click()
    wait_refreshed(driver)


def test_console_pages_show_what_the_api_says(gateway: GatewayProcess, browser: WebDriver) -> None:
    url = gateway.url
    # without the admin key the data stays closed; the page asks for the key
    assert httpx.get(url + "/admin/experiments").status_code == 401
    assert httpx.get(url + "/console").status_code == 200
    drive(url, range(0, 40), per_unit=8)
    login(browser, url)

    for page, source in (("targets", "targets"), ("models", "policy"), ("cache", "cache")):
        browser.get(f"{url}/console/{page}")
        wait_refreshed(browser)
        docs = {source: admin(url, "/admin/" + ("policy" if source == "policy" else source))}
        if page == "targets":
            docs["policy"] = admin(url, "/admin/policy")
        # the page reads the API itself; compare once a refresh has run with no traffic
        wait_refreshed(browser, after=wait_refreshed(browser))
        assert check_against_api(browser, docs) >= 3
        screenshot(browser, page)
        if page == "models":  # each version's state, from the targets that run it
            states = browser.execute_script(
                "return Object.fromEntries([...document.querySelectorAll('[data-version-state]')]"
                ".map(n => [n.dataset.versionState, n.textContent]))"
            )
            assert states == {
                "m@1": "1: serving",
                "m@2": "2: serving",
                "n@1": "1: serving",
                "n@2": "2: serving",
            }
    browser.get(f"{url}/console/targets")
    wait_refreshed(browser)
    assert {
        row.get_attribute("data-target")
        for row in browser.find_elements(By.CSS_SELECTOR, "tr[data-target]")
    } == set(admin(url, "/admin/targets")["targets"])

    browser.get(f"{url}/console/experiments")
    count = wait_refreshed(browser, after=wait_refreshed(browser))
    docs = {"experiments": admin(url, "/admin/experiments")}
    wait_refreshed(browser, after=count)
    checked = check_against_api(browser, docs)
    assert checked > 30
    reports = {e["name"]: e for e in docs["experiments"]["experiments"]}
    # the A/B's latency difference is significant (always-valid, Holm); the A/A's nothing
    ab, aa = reports["ab"], reports["aa"]
    assert ab["comparison"][0]["latency"]["significant"] is True
    assert ab["comparison"][0]["latency"]["always_valid"]["difference_ci95"][0] > 5
    assert aa["comparison"][0]["significant"] == []
    cell = browser.find_element(
        By.CSS_SELECTOR,
        '[data-experiment="ab"] tr[data-comparison="treatment/latency"] [data-significant]',
    )
    assert cell.get_attribute("data-significant") == "true"
    assert browser.find_elements(By.CSS_SELECTOR, 'svg.forest[data-experiment="ab"]')
    assert browser.find_elements(By.CSS_SELECTOR, 'svg.exposure[data-experiment="ab"] polyline')
    assert ab["sample_ratio"]["mismatch"] is False
    screenshot(browser, "experiments")

    # live: more traffic shows up without a reload
    browser.execute_script("window.__sameDocument = true")
    before = ab["arms"]["control"]["requests"] + ab["arms"]["treatment"]["requests"]
    drive(url, range(40, 48), per_unit=4)

    def requests_shown(d: WebDriver) -> int:
        total = 0
        for arm in ("control", "treatment"):
            path = json.dumps(["experiments", 0, "arms", arm, "requests"], separators=(",", ":"))
            nodes = d.find_elements(By.CSS_SELECTOR, f"[data-path='{path}']")
            total += int(nodes[0].text) if nodes else 0
        return total if total > before else 0

    assert waiting(browser, 20).until(requests_shown) > before
    assert browser.execute_script("return window.__sameDocument === true")


def test_stop_and_resume_buttons(gateway: GatewayProcess, browser: WebDriver) -> None:
    url = gateway.url
    browser.get(f"{url}/console/experiments")
    try:
        wait_refreshed(browser, timeout_s=5)
    except TimeoutException:
        login(browser, url)
    stop = waiting(browser, 20).until(
        lambda d: d.find_element(By.CSS_SELECTOR, '[data-stop="ab/treatment"]')
    )
    stop.click()

    def state(d: WebDriver) -> str:
        return d.find_element(By.CSS_SELECTOR, '[data-experiment="ab"] [data-state]').text

    waiting(browser, 20).until(lambda d: state(d) == "control only")
    report = admin(url, "/admin/experiments/ab")
    assert report["state"] == "control only"
    assert report["arms"]["treatment"]["stopped"]["reason"] == "stopped by an operator"
    screenshot(browser, "experiment-stopped")
    resume = waiting(browser, 20).until(
        lambda d: d.find_element(By.CSS_SELECTOR, '[data-resume="ab"]')
    )
    resume.click()
    waiting(browser, 20).until(lambda d: state(d) == "running")
    assert admin(url, "/admin/experiments/ab")["state"] == "running"


def test_cli_writes_a_self_contained_report(
    gateway: GatewayProcess, browser: WebDriver, tmp_path: Path
) -> None:
    out = tmp_path / "report.html"
    raw = tmp_path / "report.json"
    done = subprocess.run(
        [
            sys.executable,
            "-m",
            "prism.gateway.cli",
            "experiments",
            "report",
            "ab",
            "--url",
            gateway.url,
            "--out",
            str(out),
            "--key",
            ADMIN_KEY,
            "--json",
            str(raw),
        ],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode == 0, done.stderr
    assert "latency" in done.stdout  # the significant metrics, said on the way out
    html = out.read_text()
    assert "<script src=" not in html and "<link " not in html  # nothing loaded from elsewhere
    browser.get(out.as_uri())
    wait_refreshed(browser)
    assert check_against_api(browser, {"report": json.loads(raw.read_text())}) > 20
    assert browser.find_elements(By.CSS_SELECTOR, "svg.forest")
    assert not browser.find_elements(By.CSS_SELECTOR, "[data-stop], [data-resume]")
    screenshot(browser, "report")
    # a missing experiment is a clear error, not a traceback
    bad = subprocess.run(
        [
            sys.executable,
            "-m",
            "prism.gateway.cli",
            "experiments",
            "report",
            "nope",
            "--url",
            gateway.url,
            "--out",
            str(tmp_path / "x.html"),
            "--key",
            ADMIN_KEY,
        ],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert bad.returncode != 0 and "404" in bad.stderr and "Traceback" not in bad.stderr


def test_swagger_ui_loads_from_the_gateway_alone(
    gateway: GatewayProcess, browser: WebDriver
) -> None:
    browser.get(gateway.url + "/schema/swagger")
    title = waiting(browser, 30).until(
        lambda d: d.find_element(By.CSS_SELECTOR, ".swagger-ui .info .title")
    )
    assert "Prism" in title.text
    waiting(browser, 10).until(lambda d: d.find_elements(By.CSS_SELECTOR, ".opblock-summary-path"))
    loaded = browser.execute_script(
        "return performance.getEntriesByType('resource').map(e => e.name)"
    )
    assert loaded and all(name.startswith(gateway.url) for name in loaded), loaded
    screenshot(browser, "swagger")
