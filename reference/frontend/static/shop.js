"use strict";
// The shop's page. Nothing the services answer is ever parsed as HTML: text goes in with
// textContent (or escape() inside the markup we build), so a user name cannot inject a
// script. The signed-in user (id, name, token) lives in sessionStorage: a reload keeps
// it, closing the tab forgets it.
let api = null;
let user = JSON.parse(sessionStorage.getItem("tidings-user") || "null");
const $ = (id) => document.getElementById(id);

// The headers of a call as the signed-in user.
function auth(extra) {
  return {...(extra || {}), ...(user ? {authorization: `Bearer ${user.token}`} : {})};
}

// A 4xx answer as a sentence: the API's reason, or each invalid field and what is wrong.
function readable(detail, fallback) {
  if (typeof detail === "string") return detail;
  if (Array.isArray(detail)) {
    return detail.map((e) => {
      const field = (e.loc || []).filter((p) => p !== "body" && typeof p === "string").pop();
      const what = (e.msg || "is invalid").replace(/^Input should be/, "should be");
      return field ? `${field.replace(/_/g, " ")} ${what}` : what;
    }).join("; ");
  }
  return fallback;
}

async function call(url, options) {
  const response = await fetch(url, options);
  const body = await response.json().catch(() => ({}));
  if (!response.ok) {
    const error = new Error(readable(body.detail, `${response.status} ${response.statusText}`));
    error.status = response.status;
    if (response.status === 401 && user) forget();  // a token of an earlier run of the shop
    throw error;
  }
  return body;
}

function status(text, className) {
  const span = document.createElement("span");
  span.className = className;
  span.textContent = text;
  $("user-status").replaceChildren(span);
}

function forget() {
  user = null;
  sessionStorage.removeItem("tidings-user");
  $("orders").replaceChildren();
  showUser();
}

function showUser() {
  if (user) status(`Welcome, ${user.username} (user ${user.id})`, "ok");
  else $("user-status").textContent = "Not registered yet.";
}

$("register-form").addEventListener("submit", async (event) => {
  event.preventDefault();
  try {
    user = await call(`${api.users}/register`, {
      method: "POST", headers: {"content-type": "application/json"},
      body: JSON.stringify({username: $("username").value, age: Number($("age").value),
                            address: $("address").value}),
    });
    sessionStorage.setItem("tidings-user", JSON.stringify(user));
    $("order-error").textContent = "";
    showUser();
    refreshOrders();
  } catch (err) { status(err.message, "error"); }
});

async function refreshProducts() {
  try {
    const products = await call(`${api.inventory}/products`);
    const body = $("products");
    for (const p of products) {
      let row = document.getElementById(`row-${p.sku}`);
      if (!row) {
        row = document.createElement("tr");
        row.id = `row-${p.sku}`;
        row.innerHTML = `<td>${escape(p.sku)}</td><td>${escape(p.name)}</td><td>${p.price.toFixed(2)}</td>` +
          `<td class="available"></td><td><input class="qty" type="number" min="0" value="0" data-sku="${escape(p.sku)}"></td>`;
        body.appendChild(row);
      }
      row.querySelector(".available").textContent = p.available;
    }
  } catch (err) { /* inventory restarting: try again on the next tick */ }
}

async function refreshOrders() {
  if (!user) return;
  try {
    const orders = await call(`${api.orders}/orders`, {headers: auth()});
    $("orders").innerHTML = orders.map((o) =>
      `<tr><td><code>${escape(o.order_id.slice(0, 8))}</code></td><td>${o.total.toFixed(2)}</td>` +
      `<td class="${o.status === "PENDING" ? "pending" : ""}">${escape(o.status)}</td><td>${escape(o.reason)}</td></tr>`).join("");
  } catch (err) { /* orders restarting */ }
}

$("place-order").addEventListener("click", async () => {
  $("order-error").textContent = "";
  if (!user) { $("order-error").textContent = "Register first."; return; }
  const items = [...document.querySelectorAll("input.qty")]
    .filter((i) => Number(i.value) > 0).map((i) => ({sku: i.dataset.sku, qty: Number(i.value)}));
  if (!items.length) { $("order-error").textContent = "Choose at least one product."; return; }
  try {
    // The card number goes to the payments service's vault only (as to a payment
    // gateway); the order carries the token it answers.
    const card = await call(`${api.payments}/vault`, {
      method: "POST", headers: auth({"content-type": "application/json"}),
      body: JSON.stringify({card_number: $("card").value.trim()}),
    });
    const accepted = await call(`${api.orders}/orders`, {
      method: "POST", headers: auth({"content-type": "application/json"}),
      body: JSON.stringify({user_id: user.id, items, card_token: card.card_token}),
    });
    watch(accepted.order_id);
  } catch (err) { $("order-error").textContent = err.message; }
});

let timelineTimer = null;

function escape(text) {
  return String(text ?? "").replace(/[&<>"']/g, (c) => `&#${c.charCodeAt(0)};`);
}

// The order's conversation as the console rebuilds it from the bus: each message with
// the services (consumer groups) that handled it; polled until a while after it settles.
function followTimeline(orderId) {
  clearInterval(timelineTimer);
  $("timeline").innerHTML = "";
  let after = 0;
  const draw = async () => {
    let data;
    try { data = await call(`${api.console}/api/conversations/${encodeURIComponent(orderId)}`); }
    catch (err) { return; }
    $("timeline").innerHTML = data.messages.map((m) =>
      `<li data-type="${escape(m.type)}"><b>${escape(m.type || m.topic)}</b> on ${escape(m.topic)} ` +
      `<small>${new Date(m.published_at * 1000).toLocaleTimeString()}</small> ` +
      m.handled_by.map((h) => `<span class="${h.outcome === "handled" ? "ok" : "pending"}">` +
        `${escape(h.group)}: ${escape(h.outcome)}</span>`).join(", ") + `</li>`).join("");
    if ($("outcome-title").className !== "pending" && ++after > 20) clearInterval(timelineTimer);
  };
  timelineTimer = setInterval(draw, 500);
  draw();
}

function watch(orderId) {
  followTimeline(orderId);
  $("shop-section").classList.add("hidden");
  $("outcome").classList.remove("hidden");
  $("outcome-title").textContent = "Order pending…";
  $("outcome-title").className = "pending";
  $("outcome-detail").textContent = `Order ${orderId}: reserving stock and charging your card.`;
  const timer = setInterval(async () => {
    let order;
    try { order = await call(`${api.orders}/orders/${orderId}`, {headers: auth()}); }
    catch (err) { return; }
    if (order.status === "PENDING") return;
    clearInterval(timer);
    refreshOrders();
    if (order.status === "CONFIRMED") {
      $("outcome-title").textContent = "Payment successful";
      $("outcome-title").className = "ok";
      $("outcome-detail").textContent = `Order ${orderId} is confirmed: ${order.total.toFixed(2)} charged.`;
    } else {
      $("outcome-title").textContent = "Order cancelled";
      $("outcome-title").className = "error";
      $("outcome-detail").textContent = `Order ${orderId} was cancelled: ${order.reason}.`;
    }
  }, 250);
}

$("again").addEventListener("click", () => {
  $("outcome").classList.add("hidden");
  $("shop-section").classList.remove("hidden");
});

(async () => {
  api = await call("/config.json");
  showUser();
  refreshProducts(); refreshOrders();
  setInterval(refreshProducts, 1000);
  setInterval(refreshOrders, 2000);
})();
