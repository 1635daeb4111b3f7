"""A real browser (Debian's chromium driven by Playwright) registers, orders, and reaches
the "Payment successful" page; the page is saved under .artifacts/."""

from __future__ import annotations

from pathlib import Path

from playwright.sync_api import expect, sync_playwright
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
            page.click("#place-order")
            expect(page.locator("#outcome-title")).to_have_text("Payment successful",
                                                                timeout=30_000)
            expect(page.locator("#orders")).to_contain_text("CONFIRMED", timeout=10_000)
            page.screenshot(path=str(artifacts / "reference-payment-successful.png"),
                            full_page=True)
        finally:
            browser.close()
