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


def test_console_shows_topics_redrives_a_poison_message_and_follows_an_order(
        sqlite_shop: Shop) -> None:
    """The console (port 8006 of the shop's block) in Chromium: the demo's topics and
    groups, a poison message re-driven from the page after confirming, and an order's
    timeline filling in live; the shop's page draws the same timeline."""
    import re
    import subprocess
    import sys

    import httpx

    artifacts = ROOT / ".artifacts"
    artifacts.mkdir(exist_ok=True)
    shop = sqlite_shop

    def poison() -> None:
        subprocess.run([sys.executable, "-m", "tidings.cli", "--broker",
                        shop.settings.broker_url, "publish", "orders",
                        '{"type": "NOT_AN_ORDER"}', "--key", "poison-1"], check=True,
                       capture_output=True, timeout=60)

    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=CHROMIUM, args=ARGS)
        try:
            page = browser.new_page()
            page.on("dialog", lambda dialog: dialog.accept())
            page.goto(shop.url("console", "/"))
            expect(page.locator("#topics")).to_contain_text("orders")
            expect(page.locator("#groups")).to_contain_text("inventory")
            expect(page.locator("#live")).to_contain_text("live")
            poison()
            expect(page.locator("#dlq-topic option[value='orders.dlq']")).to_have_count(
                1, timeout=20_000)
            page.select_option("#dlq-topic", "orders.dlq")
            row = page.locator("#dead-letters tr[data-position]", has_text="poison-1").first
            expect(row).to_be_visible(timeout=10_000)
            position = row.get_attribute("data-position")
            row.locator("button.redrive").click()
            expect(page.locator("#dlq-result")).to_have_text("redrive done")
            timeline = httpx.get(shop.url("console", "/api/conversations/poison-1")).json()
            assert any(m["redriven_for"] for m in timeline["messages"]), timeline
            assert all(m["key"] == "poison-1" for m in timeline["messages"])
            gone = page.locator(f"#dead-letters tr[data-position='{position}']",
                                has_text="poison-1")
            expect(gone).to_have_count(0, timeout=10_000)

            user = shop.http.post(shop.url("users", "/register"), json={
                "username": "Console Carol", "age": 40, "address": "Lyon"}).json()
            order = shop.http.post(shop.url("orders", "/orders"), json={
                "user_id": user["id"], "card_number": "4242424242424242",
                "items": [{"sku": "TEA-001", "qty": 1}]}).json()
            page.fill("#conversation-id", order["order_id"])
            page.click("#conversation-go")
            steps = page.locator("#timeline li .type")
            expect(steps.filter(has_text="ORDER_CONFIRMED")).to_have_count(1, timeout=30_000)
            shown = [t for t in steps.all_inner_texts()
                     if t in ("ORDER_CREATED", "STOCK_RESERVED", "PAYMENT_SUCCEEDED",
                              "ORDER_CONFIRMED")]
            assert shown == ["ORDER_CREATED", "STOCK_RESERVED", "PAYMENT_SUCCEEDED",
                             "ORDER_CONFIRMED"]
            expect(page.locator("#timeline")).to_contain_text("inventory: handled")
            assert "4242424242424242" not in page.content()
            page.screenshot(path=str(artifacts / "console.png"), full_page=True)

            shop_page = browser.new_page()
            shop_page.goto(shop.url("frontend", "/"))
            shop_page.fill("#username", "Timeline Tom")
            shop_page.fill("#age", "33")
            shop_page.fill("#address", "Oslo")
            shop_page.click("#register")
            expect(shop_page.locator("#user-status")).to_contain_text("Welcome")
            expect(shop_page.locator("#row-TEA-001 .available")).not_to_be_empty()
            shop_page.locator("input.qty[data-sku='TEA-001']").fill("1")
            shop_page.click("#place-order")
            expect(shop_page.locator("#outcome-title")).to_have_text("Payment successful",
                                                                     timeout=30_000)
            confirmed = shop_page.locator("#timeline li[data-type='ORDER_CONFIRMED']")
            expect(confirmed).to_have_count(1, timeout=15_000)
            expect(shop_page.locator("#timeline li").first).to_contain_text(
                re.compile("ORDER_CREATED"))
            shop_page.screenshot(path=str(artifacts / "shop-order-timeline.png"),
                                 full_page=True)
        finally:
            browser.close()
