// The explorer page: plain JavaScript, no build step, nothing fetched but this member's
// /explorer/api/... endpoints. Polls /explorer/api/head every second (one cheap request)
// and refreshes the network and the newest blocks when the height moves.
"use strict";

const API = "/explorer/api/";
const POLL_MS = 1000;
const PAGE = 20;
const TX_PAGE = 20; // a block's transactions shown at a time (the API allows up to 100)
let shownHeight = -1;
let pageBefore = null; // null: the newest page, followed live
let polling = false;

const $ = (id) => document.getElementById(id);

function el(tag, attrs, ...children) {
  const node = document.createElement(tag);
  for (const [k, v] of Object.entries(attrs || {})) {
    if (k === "onclick") node.addEventListener("click", v);
    else node.setAttribute(k, v);
  }
  for (const c of children) node.append(c instanceof Node ? c : document.createTextNode(String(c ?? "")));
  return node;
}

async function get(path) {
  const response = await fetch(API + path, { cache: "no-store" });
  const doc = await response.json().catch(() => ({ error: response.statusText }));
  if (!response.ok) throw new Error(doc.error || response.statusText);
  return doc;
}

function short(hex) { return hex ? hex.slice(0, 16) + "…" : ""; }
function when(ms) { return new Date(ms).toISOString().replace("T", " ").replace(".000Z", "Z"); }
function showError(err) { $("error").textContent = err ? String(err.message || err) : ""; }

function blockLink(height) {
  return el("a", { "data-height": height, onclick: () => showBlock(height) }, height);
}
function txLink(id) {
  return el("a", { class: "hash", "data-tx": id, onclick: () => showTx(id) }, short(id));
}

async function loadNetwork() {
  const net = await get("network");
  $("served-by").textContent = `served by ${net.member} · ${net.chain_name} · ${net.mode}`;
  const leader = net.mode === "pbft" ? `primary ${net.primary}, view ${net.view}` :
    `leader ${net.leader ?? "none"}, term ${net.term}`;
  $("summary").replaceChildren(el("dl", {},
    el("dt", {}, "members"), el("dd", { id: "member-count" }, `${net.n} (${net.reachable})`),
    el("dt", {}, "mode"), el("dd", {}, net.mode),
    el("dt", {}, net.mode === "pbft" ? "view / primary" : "term / leader"), el("dd", {}, leader),
    el("dt", {}, "height"), el("dd", { id: "height" }, net.height),
    el("dt", {}, "fault budget"), el("dd", {}, `f = ${net.f}, quorum ${net.quorum}: ${net.fault_budget}`),
    el("dt", {}, "ready"), el("dd", { class: net.ready ? "ok" : "bad" }, net.ready ? "yes" : "no"),
  ));
  const reasons = (net.not_progressing_because || []).concat(net.warnings || []);
  $("reasons").replaceChildren(...reasons.map((r) => el("p", { class: "bad" }, r)));
  const state = net.peer_state || {};
  $("members").tBodies[0].replaceChildren(...net.members.map((m) => {
    const row = state[m.name] || {};
    const role = m.name === (net.primary ?? net.leader) ? (net.mode === "pbft" ? "primary" : "leader") : "";
    const me = m.name === net.member ? " (this member)" : "";
    return el("tr", { "data-member": m.name },
      el("td", {}, m.name + me), el("td", {}, role), el("td", {}, row.state ?? ""),
      el("td", {}, m.name === net.member ? net.height : (row.lag === undefined ? "" : `${row.lag} behind`)),
      el("td", {}, m.client_address));
  }));
}

async function loadBlocks() {
  const query = `blocks?limit=${PAGE}` + (pageBefore === null ? "" : `&before=${pageBefore}`);
  const page = await get(query);
  $("block-list").tBodies[0].replaceChildren(...page.blocks.map((b) => el("tr", {},
    el("td", {}, blockLink(b.height)), el("td", { class: "hash" }, short(b.hash)),
    el("td", {}, when(b.time_ms)), el("td", {}, b.txs), el("td", { class: "ok" }, b.ok),
    el("td", { class: b.rejected ? "bad" : "" }, b.rejected))));
  $("older").disabled = page.next_before === null;
  $("older").onclick = () => { pageBefore = page.next_before; loadBlocks().catch(showError); };
}

function certificateView(cert) {
  if (!cert) return el("p", {}, "no certificate stored (the genesis block)");
  if (cert.problem) return el("p", { class: "bad" }, cert.problem);
  const fields = cert.kind.startsWith("pbft") ? [["view", cert.view], ["seq", cert.seq]] :
    [["term", cert.term], ["index", cert.index]];
  return el("dl", { id: "certificate" },
    el("dt", {}, "certificate"), el("dd", {}, cert.kind),
    ...fields.flatMap(([k, v]) => [el("dt", {}, k), el("dd", {}, v)]),
    el("dt", {}, "digest"), el("dd", { class: "hash" }, cert.digest),
    el("dt", {}, "signed by"), el("dd", {}, `${cert.signers.join(", ")} (${cert.signers.length}; ${cert.needed} needed)`));
}

function opText(op) {
  if (op.op === "put") return `put ${op.key} = ${op.value}`;
  if (op.op === "cas") return `cas ${op.key}: ${op.expected ?? "absent"} → ${op.new ?? "absent"}`;
  if (op.op === "config") return `client configuration change (${op.approvals} approvals)`;
  return `${op.op} ${op.key}`;
}

function detail(title, ...body) {
  $("detail").hidden = false;
  $("detail-title").textContent = title;
  $("detail-body").replaceChildren(...body);
  $("detail").scrollIntoView({ block: "nearest" });
}

function txPager(b) {
  const shown = b.transactions.length;
  const range = shown ? `transactions ${b.offset + 1}-${b.offset + shown} of ${b.txs}` : `${b.txs} transactions`;
  const earlier = Math.max(0, b.offset - b.limit);
  return el("p", { id: "tx-pages" }, range, " ",
    el("button", { type: "button", id: "tx-earlier", ...(b.offset > 0 ? {} : { disabled: "" }),
      onclick: () => showBlock(b.height, earlier) }, "Earlier transactions"), " ",
    el("button", { type: "button", id: "tx-later", ...(b.next_offset !== null ? {} : { disabled: "" }),
      onclick: () => showBlock(b.height, b.next_offset) }, "Later transactions"));
}

async function showBlock(height, offset = 0) {
  try {
    const b = await get(`block?height=${encodeURIComponent(height)}&offset=${offset}&limit=${TX_PAGE}`);
    showError(null);
    detail(`Block ${b.height}`,
      el("dl", {},
        el("dt", {}, "hash"), el("dd", { class: "hash" }, b.hash),
        el("dt", {}, "previous"), el("dd", {}, b.height > 0 ? blockLink(b.height - 1) : "", " ", el("span", { class: "hash" }, short(b.prev_hash))),
        el("dt", {}, "time"), el("dd", {}, when(b.time_ms)),
        el("dt", {}, "receipts root"), el("dd", { class: "hash" }, b.receipts_root),
        el("dt", {}, "state root"), el("dd", { class: "hash" }, b.state_root),
        el("dt", {}, "block signatures here"), el("dd", {}, b.block_signatures.join(", ") || "none")),
      certificateView(b.certificate),
      el("table", { id: "block-txs" }, el("thead", {}, el("tr", {},
        el("th", {}, "transaction"), el("th", {}, "client"), el("th", {}, "operations"), el("th", {}, "status"))),
        el("tbody", {}, ...b.transactions.map((t) => el("tr", {},
          el("td", {}, txLink(t.id)), el("td", {}, t.client), el("td", {}, t.ops.map(opText).join("; ")),
          el("td", { class: t.status === "ok" ? "ok" : "bad" }, t.status + (t.reason ? ` (${t.reason})` : "")))))),
      txPager(b));
  } catch (err) { showError(err); }
}

async function showTx(id) {
  try {
    const t = await get(`tx?id=${encodeURIComponent(id)}`);
    showError(null);
    const verdict = t.receipt_valid ? "valid: checks offline against genesis.json alone" :
      `incomplete: ${t.receipt_problem}`;
    detail(`Transaction ${short(t.id)}`,
      el("dl", { id: "tx" },
        el("dt", {}, "id"), el("dd", { class: "hash", id: "tx-id" }, t.id),
        el("dt", {}, "block"), el("dd", {}, blockLink(t.height), `, index ${t.index}`),
        el("dt", {}, "client"), el("dd", {}, t.client),
        el("dt", {}, "operations"), el("dd", {}, t.ops.map(opText).join("; ")),
        el("dt", {}, "status"), el("dd", { id: "tx-status", class: t.status === "ok" ? "ok" : "bad" }, t.status + (t.reason ? ` (${t.reason})` : "")),
        el("dt", {}, "results"), el("dd", {}, JSON.stringify(t.results)),
        el("dt", {}, "receipt"), el("dd", { id: "receipt-verdict", class: t.receipt_valid ? "ok" : "bad" }, verdict, t.receipt_note ? ` (${t.receipt_note})` : "")),
      el("p", {}, "Receipt document (save it and check it with ", el("code", {}, "consortium tx verify-receipt FILE"), "):"),
      el("pre", { id: "receipt" }, t.receipt_document));
  } catch (err) { showError(err); }
}

async function poll() {
  if (polling) return;
  polling = true;
  try {
    const head = await get("head");
    $("live").classList.remove("stale");
    if (head.height !== shownHeight) {
      shownHeight = head.height;
      await loadNetwork();
      if (pageBefore === null) await loadBlocks();
    }
  } catch (err) {
    $("live").classList.add("stale");
    showError(err);
  } finally {
    polling = false;
  }
}

$("search").addEventListener("submit", async (event) => {
  event.preventDefault();
  try {
    const found = await get(`search?q=${encodeURIComponent($("q").value.trim())}`);
    if (found.kind === "block") await showBlock(found.height);
    else await showTx(found.id);
  } catch (err) { showError(err); }
});
$("newest").addEventListener("click", () => { pageBefore = null; loadBlocks().catch(showError); });

poll();
setInterval(poll, POLL_MS);
setInterval(() => loadNetwork().catch(() => {}), 5 * POLL_MS); // peers change without blocks
