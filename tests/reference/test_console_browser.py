"""The tidings console in a real browser (Debian's chromium driven by Playwright), on the
demo's shop: its topics and groups, a poison message re-driven from the page, an order's
timeline filling in live; and the shop page's own order timeline. Screenshots go to
.artifacts/ (docs/console.md shows them)."""

from __future__ import annotations

import re
import subprocess
import sys

import httpx
from playwright.sync_api import expect, sync_playwright
from shop import Shop
from test_browser import ARGS, CHROMIUM, ROOT


def test_console_shows_topics_redrives_a_poison_message_and_follows_an_order(
        sqlite_shop: Shop) -> None:
    """The console (port 8006 of the shop's block) in Chromium: the demo's topics and
    groups, a poison message re-driven from the page after confirming, and an order's
    timeline filling in live; the shop's page draws the same timeline."""
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

            user = shop.register("Console Carol", 40, "Lyon")
            order = shop.http.post(shop.url("orders", "/orders"), json={
                "user_id": user["id"], "card_token": shop.card_token(user),
                "items": [{"sku": "TEA-001", "qty": 1}]},
                headers={"authorization": f"Bearer {user['token']}"}).json()
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
