"""The console page in a real browser: headless Chromium driven by selenium.

Needs Debian's `chromium` and `chromium-driver` (/usr/bin/chromium,
/usr/bin/chromedriver) and the `selenium` package; skips, saying which is
missing, without them.  The page is checked as a user sees it: worker pids in
the table, a replacement appearing without reloading the page, the reload
button (with a token) moving the generation on and the workers' output shown,
and no buttons, no output (and a refused POST) without one.  The run saves a screenshot at 4 watchers into
$SOCKVISOR_ARTIFACTS (default tests/artifacts/) for the README.
"""

from __future__ import annotations

import os
import shutil
import signal
from pathlib import Path

import pytest

from http_helpers import console_token, console_url
from control_helpers import control

from conftest import wait_for

CHROMIUM = "/usr/bin/chromium"
CHROMEDRIVER = "/usr/bin/chromedriver"
ARTIFACTS = Path(os.environ.get("SOCKVISOR_ARTIFACTS",
                                Path(__file__).resolve().parents[1] / "artifacts"))


def _missing() -> str | None:
    missing = [f"{path} (apt-get install {package})"
               for path, package in ((CHROMIUM, "chromium"), (CHROMEDRIVER, "chromium-driver"))
               if not shutil.which(path)]
    try:
        import selenium  # noqa: F401
    except ImportError:
        missing.append("selenium (pip install selenium)")
    return ", ".join(missing) or None


pytestmark = [pytest.mark.skipif(_missing() is not None,
                                 reason=f"browser tests need {_missing()}"),
              pytest.mark.timeout(120)]


@pytest.fixture
def browser(tmp_path):
    from selenium import webdriver
    from selenium.webdriver.chrome.options import Options
    from selenium.webdriver.chrome.service import Service
    options = Options()
    options.binary_location = CHROMIUM
    for argument in ("--headless=new", "--no-sandbox", "--disable-gpu",
                     "--disable-dev-shm-usage", "--window-size=1280,1000",
                     f"--user-data-dir={tmp_path / 'chromium'}", "--no-first-run",
                     "--disable-extensions", "--disable-background-networking"):
        options.add_argument(argument)
    driver = webdriver.Chrome(service=Service(CHROMEDRIVER), options=options)
    driver.set_page_load_timeout(30)
    driver.set_script_timeout(30)
    try:
        yield driver
    finally:
        driver.quit()


def four_watchers(scripts) -> str:
    return f"""
        [socket:web]
        host = 127.0.0.1
        port = 0

        [socket:api]
        host = 127.0.0.1
        port = 0

        [watcher:web]
        cmd = {scripts.cmd("worker.py", "--say", "web-worker-up")}
        sockets = web
        numprocesses = 2
        stdout = prefix
        graceful_timeout = 2

        [watcher:api]
        cmd = {scripts.cmd("worker.py")}
        sockets = api
        numprocesses = 2
        graceful_timeout = 2

        [watcher:jobs]
        cmd = /bin/sleep 3600
        numprocesses = 1

        [watcher:reports]
        cmd = {scripts.cmd("worker.py", "--no-serve", "--say-err", "report-queue-empty")}
        sockets = api
        numprocesses = 1
        stderr = prefix
        graceful_timeout = 1
    """


# The page re-renders a card when its watcher changes, so elements found a
# moment ago go stale: read in one script call, click with a retry.

def page_pids(driver, watcher: str) -> set[int]:
    pids = driver.execute_script(
        "return [...document.querySelectorAll(arguments[0])].map((r) => r.dataset.pid)",
        f'[data-watcher="{watcher}"] tr.worker')
    return {int(pid) for pid in pids}


def page_generation(driver, watcher: str) -> int | None:
    text = driver.execute_script(
        "const g = document.querySelector(arguments[0]); return g && g.textContent",
        f'[data-watcher="{watcher}"] .generation')
    return int(text) if text else None


def click(driver, selector: str) -> None:
    from selenium.common.exceptions import StaleElementReferenceException

    def clicked() -> bool:
        try:
            driver.find_element("css selector", selector).click()
            return True
        except StaleElementReferenceException:
            return False
    wait_for(clicked, 10)


def open_console(driver, url: str):
    driver.get(url)
    # A marker that a page reload would lose: proves updates come without one.
    driver.execute_script("window.__sockvisor_test_marker = 42;")
    wait_for(lambda: "live" in driver.find_element("id", "live").text, 15)


def still_same_page(driver) -> bool:
    return driver.execute_script("return window.__sockvisor_test_marker") == 42


def test_page_follows_workers_live_and_is_read_only_without_token(sockvisor, scripts, browser):
    sv = sockvisor(four_watchers(scripts), globals="http = 127.0.0.1:0")
    url = console_url(sv)
    open_console(browser, url)
    web_pids = set(sv.wait_workers(2, "web-worker-up"))
    wait_for(lambda: page_pids(browser, "web") == web_pids, 15,
             message=lambda: f"pids {web_pids} on the page (have {page_pids(browser, 'web')})")
    assert {"web", "api", "jobs", "reports"} <= {
        card.get_attribute("data-watcher")
        for card in browser.find_elements("css selector", "[data-watcher]")}
    # Without the token the card says output needs it, and shows none of it.
    wait_for(lambda: browser.find_elements(
        "css selector", '[data-watcher="web"] .output-locked'), 15)
    assert "needs the token" in browser.find_element(
        "css selector", '[data-watcher="web"] .output-locked').text
    assert browser.find_elements("css selector", "pre.output") == []

    # Killed from outside: the new pid shows up without reloading the page.
    victim = min(web_pids)
    os.kill(victim, signal.SIGKILL)
    new_pids = set(sv.wait_workers(2, "web-worker-up", exclude=[victim]))
    [replacement] = new_pids - web_pids
    wait_for(lambda: replacement in page_pids(browser, "web")
             and victim not in page_pids(browser, "web"), 15,
             message=lambda: f"{replacement} replacing {victim} on the page "
                             f"(have {page_pids(browser, 'web')})")
    assert still_same_page(browser)

    # The accept-queue figures are there for each socket.
    queues = [cell.text for cell in browser.find_elements("css selector", "td.queue")]
    assert len(queues) == 2 and all(q.startswith("0 / ") for q in queues), queues

    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    browser.save_screenshot(str(ARTIFACTS / "console.png"))

    # No token: no action buttons, and the POST the button would send is refused;
    # nor does the page's own origin get the output by asking.
    assert browser.find_elements("css selector", "button[data-action]") == []
    status = browser.execute_async_script("""
        const done = arguments[arguments.length - 1];
        fetch('/api/watchers/web/reload', {method: 'POST', body: '{}'})
          .then((r) => done(r.status), (e) => done(String(e)));""")
    assert status in (401, 403)
    body = browser.execute_async_script("""
        const done = arguments[arguments.length - 1];
        fetch('/api/watchers/web/logs').then((r) => r.text().then((t) => done([r.status, t])),
                                             (e) => done([0, String(e)]));""")
    assert body[0] in (401, 403) and "web-worker-up" not in body[1], body
    assert "web-worker-up" not in browser.page_source
    with control(sv) as ctl:
        assert ctl.status("web")["generation"] == 1


def test_reload_button_with_token_moves_the_generation(sockvisor, scripts, browser):
    sv = sockvisor(four_watchers(scripts), globals="http = 127.0.0.1:0")
    url = console_url(sv)
    open_console(browser, url)
    wait_for(lambda: page_generation(browser, "web") == 1, 15)
    assert browser.find_elements("css selector", "button[data-action]") == []

    # A wrong token: still read-only.
    browser.find_element("id", "token").send_keys("not-the-token")
    browser.find_element("id", "use-token").click()
    wait_for(lambda: browser.find_element("id", "token-state").text == "token refused", 10)
    assert browser.find_elements("css selector", "button[data-action]") == []

    browser.find_element("id", "token").send_keys(console_token(sv))
    browser.find_element("id", "use-token").click()
    reload_button = '[data-watcher="web"] button[data-action="reload"]'
    wait_for(lambda: browser.find_elements("css selector", reload_button), 10)
    # With the token, the last lines each watcher wrote appear.
    def output(watcher: str) -> str:
        return browser.execute_script(
            "const o = document.querySelector(arguments[0]); return o ? o.textContent : ''",
            f'[data-watcher="{watcher}"] pre.output')
    wait_for(lambda: "web-worker-up" in output("web"), 15,
             message=lambda: f"web's output on the page (have {output('web')!r})")
    wait_for(lambda: "report-queue-empty" in output("reports"), 15)
    old_pids = set(sv.wait_workers(2, "web-worker-up"))
    click(browser, reload_button)
    wait_for(lambda: page_generation(browser, "web") == 2, 20,
             message=lambda: f"generation 2 on the page (have {page_generation(browser, 'web')})")
    with control(sv) as ctl:
        detail = ctl.wait_ready("web", 2, generation=2)
    new_pids = {w["pid"] for w in detail["workers"]}
    assert not new_pids & old_pids
    wait_for(lambda: page_pids(browser, "web") == new_pids, 15)
    assert still_same_page(browser)
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    browser.save_screenshot(str(ARTIFACTS / "console-with-token.png"))
    # The token is in no URL the page used.
    token = console_token(sv)
    urls = browser.execute_script(
        "return performance.getEntriesByType('resource').map((e) => e.name)")
    assert urls and not any(token in u for u in urls + [browser.current_url])
