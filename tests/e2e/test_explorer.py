"""The browser explorer against a live 4-member pbft network: Debian's chromium, headless,
driven through selenium (never a downloaded browser or driver: SE_OFFLINE and the paths given).
The page loads and shows the members; the height it shows moves as transactions commit,
without a reload; a transaction the test submitted is found by its id, with its receipt
document; a transaction whose key and value are HTML shows them as text, in its own view and
its block's, and runs none of it (the page also runs under its Content-Security-Policy). The
screenshot is kept in test-artifacts/explorer.png; CONSORTIUM_UPDATE_SCREENSHOT=1 also
replaces docs/explorer.png with it."""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import pytest
import trio

from consortium.cli.demo import wait_until_up
from consortium.cli.network import LocalNetwork, init_network, load_client_setup
from consortium.client import ConsortiumClient
from consortium.crypto.keys import KeyPair
from consortium.ledger.genesis import Genesis, Params
from consortium.ledger.tx import Put
from consortium.node.config import config_path, load_config
from tests.e2e.test_faults import submit

pytestmark = pytest.mark.e2e

CHROMIUM = Path("/usr/bin/chromium")
CHROMEDRIVER = Path("/usr/bin/chromedriver")
WAIT_S = 20.0
ROOT = Path(__file__).resolve().parents[2]
# The screenshot is a test artifact in test-artifacts/ (ignored by git) after every run; the
# docs' copy is replaced only on request (CONSORTIUM_UPDATE_SCREENSHOT=1), so a test run never
# leaves the checkout modified.
ARTIFACT = ROOT / "test-artifacts" / "explorer.png"
DOCS_SCREENSHOT = ROOT / "docs" / "explorer.png"


XSS_KEY = '<img src=x onerror="window.__xss=1">'
XSS_VALUE = "<script>window.__xss=2</script>"


async def submit_html(genesis: Genesis, key: KeyPair) -> bytes:
    """A transaction whose key and value are HTML that runs script if a page renders it."""
    async with ConsortiumClient(genesis, key) as client:
        tx = client.make_tx([Put(XSS_KEY.encode(), XSS_VALUE.encode())])
        (outcome,) = await client.submit_and_wait([tx], timeout_s=30.0)
    assert outcome.status == "committed", outcome
    return tx.id


def browser(profile: Path):  # type: ignore[no-untyped-def]
    if not CHROMIUM.exists() or not CHROMEDRIVER.exists():
        pytest.fail(
            f"the explorer's browser test needs {CHROMIUM} and {CHROMEDRIVER}: "
            "apt-get install chromium chromium-driver"
        )
    os.environ["SE_OFFLINE"] = "1"  # selenium-manager never downloads anything
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    options = webdriver.ChromeOptions()
    options.binary_location = str(CHROMIUM)
    for flag in (
        "--headless=new",
        "--no-sandbox",
        "--disable-gpu",
        "--disable-dev-shm-usage",
        f"--user-data-dir={profile}",
        "--window-size=1400,1100",
    ):
        options.add_argument(flag)
    return webdriver.Chrome(service=Service(executable_path=str(CHROMEDRIVER)), options=options)


def test_the_explorer_in_a_browser_against_a_live_network(tmp_path: Path) -> None:
    from selenium.common.exceptions import StaleElementReferenceException
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import WebDriverWait

    directory = tmp_path / "net"
    init_network(directory, members=4, clients=1, params=Params(request_timeout_ms=2000))
    network = LocalNetwork(directory)
    n1 = network.homes[0]
    toml = config_path(n1)
    toml.write_text(toml.read_text().replace("[http]\n", "[http]\nexplorer = true\n"))
    http = load_config(n1).http_listen
    assert http is not None
    setup = load_client_setup(directory)
    network.start()
    driver = None
    try:
        trio.run(wait_until_up, setup.genesis, 30.0)
        first = trio.run(submit, setup.genesis, setup.keys()[0], 5, "explorer-a")
        assert len(first) == 5
        driver = browser(tmp_path / "chromium-profile")
        # (a view the page replaces between finding an element and reading it: look again)
        wait = WebDriverWait(driver, WAIT_S, ignored_exceptions=(StaleElementReferenceException,))
        driver.get(f"http://127.0.0.1:{http[1]}/explorer/")

        def members_shown(_: object) -> bool:
            rows = driver.find_elements(By.CSS_SELECTOR, "#members tbody tr")
            return [r.get_attribute("data-member") for r in rows] == ["n1", "n2", "n3", "n4"]

        wait.until(members_shown)
        assert "served by n1" in driver.find_element(By.ID, "served-by").text
        wait.until(lambda d: d.find_elements(By.CSS_SELECTOR, "#block-list tbody tr"))
        before = int(driver.find_element(By.ID, "height").text)
        assert before >= 1

        # Live: the page polls; the height it shows moves as more transactions commit.
        committed = trio.run(submit, setup.genesis, setup.keys()[0], 20, "explorer-b")
        assert len(committed) == 20
        wait.until(lambda d: int(d.find_element(By.ID, "height").text) > before)
        top = driver.find_element(By.CSS_SELECTOR, "#block-list tbody tr td a")
        assert int(top.text) > before

        # A transaction the test submitted, found by its id, with its receipt document.
        wanted = committed[-1].hex()
        driver.find_element(By.ID, "q").send_keys(wanted)
        driver.find_element(By.CSS_SELECTOR, "#search button").click()
        wait.until(lambda d: d.find_elements(By.ID, "tx-id"))
        assert driver.find_element(By.ID, "tx-id").text == wanted
        assert driver.find_element(By.ID, "tx-status").text == "ok"
        receipt = driver.find_element(By.ID, "receipt").text
        assert '"format": "consortium-receipt/1"' in receipt and wanted in receipt
        verdict = driver.find_element(By.ID, "receipt-verdict").text
        assert verdict.startswith("valid"), verdict  # f+1 signatures gathered from the members

        driver.execute_script("window.scrollTo(0, 0)")
        shot = tmp_path / "explorer.png"
        assert driver.save_screenshot(str(shot))
        ARTIFACT.parent.mkdir(exist_ok=True)
        shutil.copyfile(shot, ARTIFACT)
        if os.environ.get("CONSORTIUM_UPDATE_SCREENSHOT") == "1":
            shutil.copyfile(shot, DOCS_SCREENSHOT)
        assert not driver.find_element(By.ID, "error").text

        # Ledger text is text: HTML in a key and a value shows literally and runs nothing.
        html_tx = trio.run(submit_html, setup.genesis, setup.keys()[0]).hex()
        search = driver.find_element(By.ID, "q")
        search.clear()
        search.send_keys(html_tx)
        driver.find_element(By.CSS_SELECTOR, "#search button").click()
        wait.until(lambda d: d.find_element(By.ID, "tx-id").text == html_tx)
        assert f"put {XSS_KEY} = {XSS_VALUE}" in driver.find_element(By.ID, "tx").text
        driver.find_element(By.CSS_SELECTOR, "#tx a[data-height]").click()
        wait.until(lambda d: d.find_elements(By.CSS_SELECTOR, f"#block-txs a[data-tx='{html_tx}']"))
        assert f"put {XSS_KEY} = {XSS_VALUE}" in driver.find_element(By.ID, "block-txs").text
        assert driver.find_element(By.ID, "tx-pages").text.startswith("transactions 1-")
        assert not driver.find_elements(By.CSS_SELECTOR, "#detail img, #detail script")
        assert driver.execute_script("return window.__xss") is None
        assert not driver.find_element(By.ID, "error").text
    finally:
        if driver is not None:
            driver.quit()
        network.stop()
