"""A real browser (Debian's chromium driven by Playwright) registers, orders, and reaches
the "Payment successful" page (saved under .artifacts/); then reaches every other outcome
from the page, and reads every refusal as a sentence."""

from __future__ import annotations

import shlex
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
from playwright.sync_api import Page, expect, sync_playwright
from shop import Shop

ROOT = Path(__file__).resolve().parents[2]
CHROMIUM = "/usr/bin/chromium"  # apt-get install -y chromium (playwright install fails here)
ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
        "--disable-background-networking", "--disable-component-update", "--disable-sync"]


def test_register_order_and_see_payment_successful(sqlite_shop: Shop) -> None:
    artifacts = ROOT / ".artifacts"
    artifacts.mkdir(exist_ok=True)
    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=CHROMIUM, args=ARGS)
        try:
            page = browser.new_page()
            page.goto(sqlite_shop.url("frontend", "/"))
            page.fill("#username", "Alice Smith")
            page.fill("#age", "25")
            page.fill("#address", "Beijing")
            page.click("#register")
            expect(page.locator("#user-status")).to_contain_text("Welcome, Alice Smith")
            tea = page.locator("input.qty[data-sku='TEA-001']")
            expect(tea).to_be_visible()
            expect(page.locator("#row-TEA-001 .available")).not_to_be_empty()
            tea.fill("2")
            page.fill("#card", "4242 4242 4242 4242")  # typed in groups, as printed
            page.click("#place-order")
            expect(page.locator("#outcome-title")).to_have_text("Payment successful",
                                                                timeout=30_000)
            expect(page.locator("#orders")).to_contain_text("CONFIRMED", timeout=10_000)
            page.screenshot(path=str(artifacts / "reference-payment-successful.png"),
                            full_page=True)
        finally:
            browser.close()


@pytest.fixture
def page(sqlite_shop: Shop) -> Iterator[Page]:
    """A fresh browser page on the shop; the requests it made that failed are kept in
    ``page.failures`` (status >= 400)."""
    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=CHROMIUM, args=ARGS)
        try:
            page = browser.new_page()
            failures: list[str] = []
            page.on("response", lambda r: failures.append(f"{r.status} {r.url}")
                    if r.status >= 400 else None)
            page.failures = failures  # type: ignore[attr-defined]
            yield page
        finally:
            browser.close()


def _order(page: Page, sku: str, qty: int, card: str) -> None:
    for field in page.locator("input.qty").all():
        field.fill("0")
    page.locator(f"input.qty[data-sku='{sku}']").fill(str(qty))
    page.fill("#card", card)
    page.click("#place-order")


def _outcome(page: Page, title: str, detail: str) -> None:
    expect(page.locator("#outcome-title")).to_have_text(title, timeout=30_000)
    expect(page.locator("#outcome-detail")).to_contain_text(detail)
    page.click("#again")


def test_every_outcome_is_one_click_away_and_refusals_read_as_sentences(
        sqlite_shop: Shop, page: Page) -> None:
    page.goto(sqlite_shop.url("frontend", "/"))
    page.evaluate("sessionStorage.clear()")
    page.reload()
    expect(page.locator("#row-VASE-007 .available")).to_have_text("3")
    page.click("#place-order")
    expect(page.locator("#order-error")).to_have_text("Register first.")
    page.fill("#username", "Bob Li")
    page.click("#register")
    expect(page.locator("#user-status")).to_contain_text("Welcome, Bob Li")
    expect(page.locator("#order-error")).to_have_text("")
    page.reload()  # the user (and their token) stay for the tab's session
    expect(page.locator("#user-status")).to_contain_text("Welcome, Bob Li")

    _order(page, "TEA-001", 1001, "4242424242424242")  # over the per-line limit
    error = page.locator("#order-error")
    expect(error).to_have_text("qty should be less than or equal to 1000")
    _order(page, "TEA-001", 1, "4242 4242 4242 4241")
    expect(error).to_have_text("invalid card number")

    _order(page, "SILK-006", 9, "4242 4242 4242 4242")  # 531.00 from a new account
    _outcome(page, "Order cancelled", "fraud: large-order-new-account")
    _order(page, "VASE-007", 4, "4242 4242 4242 4242")
    _outcome(page, "Order cancelled", "out of stock")
    _order(page, "MUG-002", 1, "4000-0000-0000-0002")
    _outcome(page, "Order cancelled", "payment declined")
    _order(page, "MUG-002", 1, "4242 4242 4242 4242")
    _outcome(page, "Payment successful", "confirmed")

    (ROOT / ".artifacts").mkdir(exist_ok=True)
    page.screenshot(path=str(ROOT / ".artifacts" / "reference-every-outcome.png"),
                    full_page=True)
    headers = page.locator("#orders-table thead th").all_text_contents()
    assert headers == ["Order", "Total", "Status", "Reason"]
    expect(page.locator("#orders tr")).to_have_count(4, timeout=10_000)
    icon = sqlite_shop.http.get(sqlite_shop.url("frontend", "/favicon.ico"))
    assert icon.status_code == 200 and icon.headers["content-type"] == "image/svg+xml"
    assert page.failures == [  # type: ignore[attr-defined]
        f"422 {sqlite_shop.url('orders', '/orders')}",
        f"422 {sqlite_shop.url('payments', '/vault')}"]


def test_a_user_name_is_text_not_markup(sqlite_shop: Shop, page: Page) -> None:
    page.goto(sqlite_shop.url("frontend", "/"))
    name = "<img src=x onerror=\"document.title='pwned'\">"
    page.fill("#username", name)
    page.click("#register")
    expect(page.locator("#user-status")).to_contain_text(f"Welcome, {name}")
    expect(page.locator("#user-status img")).to_have_count(0)
    assert page.title() == "tidings shop"


def test_the_banner_says_how_the_cli_finds_the_demo_bus(sqlite_shop: Shop) -> None:
    exports = [line for line in sqlite_shop.lines("supervisor")
               if "export TIDINGS_BROKER=" in line]
    assert len(exports) == 1, sqlite_shop.lines("supervisor")
    url = shlex.split(exports[0].split("export TIDINGS_BROKER=", 1)[1])[0]
    topics = subprocess.run([sys.executable, "-m", "tidings.cli", "topics"], capture_output=True,
                            text=True, timeout=60, env={"TIDINGS_BROKER": url, "PATH": "/usr/bin"})
    assert topics.returncode == 0, topics.stderr
    assert "orders" in topics.stdout
