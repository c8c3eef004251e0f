// palisade's dashboard. One shell page; this script draws the view the URL
// names from the hub's JSON routes. Data (evidence lines, reasons, names)
// is attacker-influenced text: it only ever goes into the page through
// textContent and attributes, never as HTML.
"use strict";

const CSRF = document.querySelector('meta[name="palisade-csrf"]').content;
const main = document.getElementById("main");
const timing = (window.palisadeTiming = { renders: 0 });

// ---------------------------------------------------------------- helpers

function el(tag, attrs, ...children) {
  const e = document.createElement(tag);
  for (const [k, v] of Object.entries(attrs || {})) {
    if (v === null || v === undefined || v === false) continue;
    if (k.startsWith("on")) e.addEventListener(k.slice(2), v);
    else if (k === "class") e.className = v;
    else e.setAttribute(k, v === true ? "" : v);
  }
  for (const c of children.flat()) {
    if (c === null || c === undefined || c === false) continue;
    e.append(c instanceof Node ? c : document.createTextNode(String(c)));
  }
  return e;
}

async function api(path, body) {
  const opts = { credentials: "same-origin", headers: {} };
  if (body !== undefined) {
    opts.method = "POST";
    opts.headers["Content-Type"] = "application/json";
    opts.headers["X-CSRF-Token"] = CSRF;
    opts.body = JSON.stringify(body);
  }
  const res = await fetch(path, opts);
  if (res.status === 401) {
    location.assign("/dashboard/login");
    throw new Error("not logged in");
  }
  let data = null;
  try { data = await res.json(); } catch (_) { data = null; }
  if (!res.ok) {
    const err = new Error((data && (data.error || data.reason)) || res.statusText);
    err.status = res.status;
    err.data = data;
    throw err;
  }
  return data;
}

// "1 banned network", "2 banned networks": a count and the word that agrees with it.
function count(n, one, many) {
  return `${n.toLocaleString()} ${n === 1 ? one : many}`;
}

function when(ts) {
  if (!ts) return "never";
  const d = new Date(ts);
  return d.toISOString().replace("T", " ").replace(/\.\d+Z$/, "Z");
}

function relative(ts) {
  if (!ts) return "forever";
  const s = Math.round((new Date(ts).getTime() - Date.now()) / 1000);
  const a = Math.abs(s);
  let text;
  if (a < 90) text = a + "s";
  else if (a < 5400) text = Math.round(a / 60) + "m";
  else if (a < 2 * 86400) text = Math.round(a / 3600) + "h";
  else text = Math.round(a / 86400) + "d";
  return s >= 0 ? "in " + text : text + " ago";
}

function origin(d) {
  const o = d.origin;
  return (o.actor ? o.actor + " via " : "") + o.source + " on " + o.node;
}

function params() {
  return new URLSearchParams(location.search);
}

// Marks a view as drawn, with how long it took (for people and for tests).
async function drawn(view, t0, fetched, extra) {
  // Until the next frame: the rows are laid out and painted.
  await new Promise((r) => requestAnimationFrame(() => setTimeout(r, 0)));
  const now = performance.now();
  Object.assign(timing, {
    view,
    fetchMs: fetched - t0,
    renderMs: now - fetched,
    totalMs: now - t0,
    sinceNavigationMs: now,
    renders: timing.renders + 1,
  }, extra || {});
  const t = document.getElementById("timing");
  if (t) t.textContent = `shown in ${Math.round(timing.totalMs)} ms` +
    (extra && extra.storeMs !== undefined ? ` (store ${extra.storeMs.toFixed(1)} ms)` : "");
  document.body.dataset.ready = view + ":" + timing.renders;
}

function showError(where, e) {
  where.replaceChildren(el("p", { class: "error", role: "alert" }, String(e.message || e)));
}

// ------------------------------------------------------------ confirmation

const dialog = document.getElementById("confirm");

// Asks before acting: `fields` are [name, label, placeholder, value]; the
// promise gives the field values, or null when cancelled.
function confirmAction(title, text, fields, okLabel, run) {
  document.getElementById("confirm-title").textContent = title;
  document.getElementById("confirm-text").textContent = text;
  const error = document.getElementById("confirm-error");
  error.textContent = "";
  const box = document.getElementById("confirm-fields");
  box.replaceChildren(...(fields || []).map(([name, label, ph, value]) =>
    el("label", {}, label, el("input", { name, id: "confirm-" + name, placeholder: ph || "", value: value || "" }))));
  const ok = document.getElementById("confirm-ok");
  ok.textContent = okLabel || "Confirm";
  const form = document.getElementById("confirm-form");
  return new Promise((resolve) => {
    const done = (v) => {
      form.onsubmit = null;
      document.getElementById("confirm-cancel").onclick = null;
      dialog.close();
      resolve(v);
    };
    document.getElementById("confirm-cancel").onclick = () => done(null);
    form.onsubmit = async (ev) => {
      ev.preventDefault();
      const values = {};
      for (const [name] of fields || []) values[name] = document.getElementById("confirm-" + name).value;
      ok.disabled = true;
      try {
        const r = await run(values);
        done(r);
      } catch (e) {
        error.textContent = e.message;
      } finally {
        ok.disabled = false;
      }
    };
    dialog.showModal();
  });
}

function act(body) {
  return api("/dashboard/api/act", body);
}

function flash(text, kind) {
  const f = el("p", { class: "flash " + (kind || ""), role: "status", id: "flash" }, text);
  document.getElementById("flash")?.remove();
  main.prepend(f);
}

function unbanButton(target, after) {
  return el("button", {
    type: "button", class: "danger small unban", "data-target": target,
    onclick: async () => {
      const r = await confirmAction("Unban " + target + "?",
        "Every node stops dropping " + target + ". Its escalation history is forgotten.",
        [], "Unban", () => act({ op: "unban", target }));
      if (r) { flash("Unbanned " + target + " on every node.", "ok"); after && after(); }
    },
  }, "Unban");
}

function extendButton(target, after) {
  return el("button", {
    type: "button", class: "small extend", "data-target": target,
    onclick: async () => {
      const r = await confirmAction("Extend the ban of " + target + "?",
        "The ban lasts this much longer on every node (e.g. 1h, 2d, forever).",
        [["span", "By", "1d", "1d"]], "Extend", (v) => act({ op: "extend", target, span: v.span }));
      if (r) { flash("Extended the ban of " + target + (r.expires ? " until " + when(r.expires) : " forever") + ".", "ok"); after && after(); }
    },
  }, "Extend");
}

function allowButton(target, after) {
  return el("button", {
    type: "button", class: "small allow", "data-target": target,
    onclick: async () => {
      const r = await confirmAction("Allow " + target + "?",
        "No node will ever drop " + target + "; bans inside it are lifted.",
        [["comment", "Comment", "office, monitoring, partner…"], ["span", "For", "forever"], ["group", "Only for group", "(every node)"]],
        "Allow", (v) => act({ op: "allow", target, comment: v.comment, span: v.span, group: v.group }));
      if (r) { flash("Allowed " + target + ".", "ok"); after && after(); }
    },
  }, "Allow");
}

function unallowButton(d, after) {
  const target = d.target;
  return el("button", {
    type: "button", class: "danger small unallow", "data-target": target,
    onclick: async () => {
      const r = await confirmAction("Revoke the allow of " + target + "?",
        target + " can be banned again." + (d.group ? " (group " + d.group + ")" : ""),
        [], "Revoke allow", () => act({ op: "unallow", target, group: d.group || undefined }));
      if (r) { flash("Revoked the allow of " + target + ".", "ok"); after && after(); }
    },
  }, "Revoke");
}

// -------------------------------------------------------------- decisions

const SORTS = {
  "updated-desc": "newest first",
  "updated-asc": "oldest first",
  "expires-asc": "expiring soonest",
  "expires-desc": "expiring last",
};

// A network ban the hub's policy made in place of many banned hosts of it
// ([rollup]): its explanation lists the member bans.
function rolledUp(d) {
  return d.action === "ban" && d.origin.source === "policy" && d.rule === "rollup";
}

function rollupTag(d) {
  return rolledUp(d)
    ? el("span", { class: "tag rollup", title: "many banned hosts of this network, rolled up into one ban: Explain lists them" }, "rolled up")
    : null;
}

function decisionRow(d, refresh) {
  const explain = el("a", { href: "/dashboard/explain?addr=" + encodeURIComponent(d.target), class: "explain" }, "Explain");
  const buttons = d.action === "ban"
    ? [explain, " ", extendButton(d.target, refresh), " ", unbanButton(d.target, refresh)]
    : d.origin.source === "policy" ? [explain, " ", el("span", { class: "muted small", title: "a palisade node's address: revoke the node's token to remove it" }, "node")]
      : [explain, " ", unallowButton(d, refresh)];
  return el("tr", { "data-target": d.target, class: d.action },
    el("td", { class: "target" }, el("a", { href: "/dashboard/explain?addr=" + encodeURIComponent(d.target) }, d.target)),
    el("td", {}, d.rule || "", rollupTag(d)),
    el("td", {}, origin(d), d.group ? el("span", { class: "tag" }, "group " + d.group) : null),
    el("td", { class: "reason" }, d.reason || ""),
    el("td", { title: when(d.updated) }, relative(d.updated)),
    el("td", { title: when(d.expires) }, d.expires ? relative(d.expires) : "forever"),
    el("td", { class: "num" }, d.hits),
    el("td", { class: "actions" }, buttons));
}

function decisionTable(rows, refresh, id) {
  return el("table", { class: "decisions", id },
    el("thead", {}, el("tr", {}, ["Target", "Rule", "Origin", "Reason", "Updated", "Expires", "Hits", ""].map((h) => el("th", {}, h)))),
    el("tbody", {}, rows.map((d) => decisionRow(d, refresh))));
}

async function viewDecisions() {
  const p = params();
  const action = p.get("action") === "allow" ? "allow" : "ban";
  const sortKey = SORTS[p.get("sort")] ? p.get("sort") : "updated-desc";
  const form = el("form", { id: "search-form", class: "filters" },
    el("input", { type: "hidden", name: "action", value: action }),
    el("input", { id: "q", name: "q", placeholder: "address or network (198.51.100.7, 2001:db8::/48)", value: p.get("q") || "", size: 34, autocomplete: "off" }),
    el("select", { name: "source", id: "source" },
      ["", "detector", "cli", "report", "feed", "policy", "config"].map((s) =>
        el("option", { value: s, selected: p.get("source") === s }, s || "any source"))),
    el("input", { name: "rule", id: "rule", placeholder: "rule", value: p.get("rule") || "", size: 12 }),
    el("input", { name: "node", id: "node", placeholder: "origin node", value: p.get("node") || "", size: 12 }),
    el("input", { name: "group", id: "group", placeholder: "group", value: p.get("group") || "", size: 10 }),
    el("select", { name: "sort", id: "sort" },
      Object.entries(SORTS).map(([k, v]) => el("option", { value: k, selected: k === sortKey }, v))),
    el("button", { type: "submit", id: "search-button" }, "Search"),
    el("a", { href: "/dashboard/?action=" + action, class: "button quiet" }, "Clear"));
  form.addEventListener("submit", (ev) => {
    ev.preventDefault();
    const q = new URLSearchParams();
    for (const [k, v] of new FormData(form)) if (String(v).trim()) q.set(k, String(v).trim());
    history.pushState(null, "", "/dashboard/?" + q);
    loadDecisions();
  });
  const tabs = el("nav", { class: "tabs" },
    el("a", { href: "/dashboard/?action=ban", class: action === "ban" ? "active" : "", id: "tab-bans" }, "Bans"),
    el("a", { href: "/dashboard/?action=allow", class: action === "allow" ? "active" : "", id: "tab-allows" }, "Allows"));
  const extra = action === "allow" ? el("form", { id: "allow-form", class: "filters" },
    el("input", { id: "allow-target", placeholder: "address or network to allow", size: 30 }),
    el("button", { type: "submit" }, "Allow…")) : null;
  if (extra) extra.addEventListener("submit", (ev) => {
    ev.preventDefault();
    const t = document.getElementById("allow-target").value.trim();
    if (t) allowButton(t, loadDecisions).click();
  });
  main.replaceChildren(
    el("div", { class: "titlebar" }, el("h1", {}, "Decisions"), el("span", { id: "counts", class: "muted" }), el("span", { id: "timing", class: "muted small" })),
    ...[tabs, form, extra, el("div", { id: "results" })].filter(Boolean));
  await loadDecisions();
}

let decisionsState = null;

async function loadDecisions(after) {
  const t0 = performance.now();
  const p = params();
  const q = new URLSearchParams();
  for (const k of ["action", "q", "rule", "node", "group", "source"]) if (p.get(k)) q.set(k, p.get(k));
  const [sort, dir] = (SORTS[p.get("sort")] ? p.get("sort") : "updated-desc").split("-");
  q.set("sort", sort);
  q.set("dir", dir);
  if (after) q.set("after", after);
  const results = document.getElementById("results");
  let page;
  try {
    page = await api("/dashboard/api/decisions?" + q);
  } catch (e) {
    showError(results, e);
    await drawn("decisions", t0, performance.now());
    return;
  }
  const fetched = performance.now();
  const c = page.counts;
  document.getElementById("counts").textContent =
    `${count(c.ban_hosts, "banned address", "banned addresses")}, ${count(c.ban_networks, "banned network", "banned networks")}, ${count(c.allows, "allow", "allows")}`;
  const refresh = () => loadDecisions(after);
  const parts = [];
  if (page.mode !== "ordered") {
    const what = p.get("q");
    parts.push(el("h2", {}, page.covering.length ? "Covering " + what : "Nothing covers " + what),
      page.covering.length ? decisionTable(page.covering, refresh, "covering") : el("p", { class: "muted", id: "covering-none" },
        "No ban or allow covers " + what + ". ", el("a", { href: "/dashboard/explain?addr=" + encodeURIComponent(what) }, "Explain it")));
    if (page.mode === "network") parts.push(el("h2", {}, (p.get("action") === "allow" ? "Allows" : "Bans") + " inside " + what));
  }
  if (page.group_allows && page.group_allows.length) {
    parts.push(el("h2", {}, "Allows for one group only"), decisionTable(page.group_allows, refresh, "group-allows"),
      el("h2", {}, "Allows for every node"));
  }
  if (page.mode !== "address") {
    parts.push(page.rows.length || page.next ? decisionTable(page.rows, refresh, "decisions") : el("p", { class: "muted", id: "empty" }, "No decisions match."));
    const nav = el("p", { class: "pager" });
    if (after) nav.append(el("a", { href: location.pathname + location.search, class: "button quiet" }, "First page"), " ");
    if (page.stopped) {
      nav.append(el("span", { class: "note", id: "examined-note" },
        `Examined ${count(page.examined, "decision", "decisions")} and found ${page.rows.length} matching. ` +
        `To answer fast whatever the hub holds, one page examines no more than ${count(page.limit_examined, "decision", "decisions")}. `));
    }
    if (page.next) {
      nav.append(el("button", { type: "button", id: "next", class: "quiet", onclick: () => loadDecisions(page.next) },
        page.stopped ? "Examine the next " + page.limit_examined.toLocaleString() + " →" : "Next page →"));
    }
    parts.push(nav);
  }
  results.replaceChildren(...parts);
  decisionsState = { first: !after && page.mode === "ordered" && !p.get("rule") && !p.get("node") && !p.get("group") && !p.get("source") && (p.get("sort") || "updated-desc") === "updated-desc", action: p.get("action") === "allow" ? "allow" : "ban" };
  await drawn("decisions", t0, fetched, { storeMs: page.took_ms, rows: page.rows.length + page.covering.length });
}

// New decisions appear on the first page without reloading.
function liveDecision(item) {
  if (!decisionsState || !decisionsState.first) return;
  const tbody = document.querySelector("#decisions tbody");
  if (!tbody) return;
  if (item.put && item.put.decision.action === decisionsState.action) {
    const d = item.put.decision;
    tbody.querySelector(`tr[data-target="${CSS.escape(d.target)}"]`)?.remove();
    const row = decisionRow(d, () => loadDecisions());
    row.classList.add("fresh");
    tbody.prepend(row);
    while (tbody.children.length > 50) tbody.lastChild.remove();
  } else if (item.remove && item.remove.action === decisionsState.action) {
    tbody.querySelector(`tr[data-target="${CSS.escape(item.remove.target)}"]`)?.remove();
  }
}

// ---------------------------------------------------------------- explain

function detail(label, ...value) {
  return [el("dt", {}, label), el("dd", {}, ...value)];
}

function decisionCard(d, kind, refresh) {
  const dl = el("dl", {},
    detail("target", d.target),
    detail("origin", origin(d)),
    d.rule ? detail("rule", d.rule, rollupTag(d)) : null,
    d.reason ? detail(d.action === "allow" ? "comment" : "reason", d.reason) : null,
    detail("since", when(d.created)),
    detail("updated", when(d.updated)),
    detail("expires", d.expires ? when(d.expires) + " (" + relative(d.expires) + ")" : "never"),
    detail("hits", String(d.hits)),
    d.group ? detail("group", d.group) : null,
    d.list ? detail("kernel list", d.list) : null);
  const evidence = d.evidence && d.evidence.length
    ? [el("h4", {}, "Evidence"), el("pre", { class: "evidence" }, d.evidence.join("\n"))] : [];
  const buttons = d.action === "ban"
    ? [extendButton(d.target, refresh), " ", unbanButton(d.target, refresh)]
    : d.origin.source === "policy" ? [el("span", { class: "muted small" }, "a palisade node's address: revoke the node's token to remove it")]
      : [unallowButton(d, refresh)];
  return el("section", { class: "card " + kind, "data-target": d.target }, el("h3", {}, kind), dl, ...evidence, el("p", { class: "actions" }, buttons));
}

async function viewExplain() {
  const addr = params().get("addr") || "";
  const form = el("form", { id: "explain-form", class: "filters" },
    el("input", { id: "addr", name: "addr", placeholder: "address or network", value: addr, size: 34 }),
    el("button", { type: "submit" }, "Explain"));
  form.addEventListener("submit", (ev) => {
    ev.preventDefault();
    history.pushState(null, "", "/dashboard/explain?addr=" + encodeURIComponent(document.getElementById("addr").value.trim()));
    loadExplain();
  });
  main.replaceChildren(el("div", { class: "titlebar" }, el("h1", {}, "Explain"), el("span", { id: "timing", class: "muted small" })),
    form, el("div", { id: "story" }));
  await loadExplain();
}

async function loadExplain() {
  const t0 = performance.now();
  const addr = params().get("addr");
  const box = document.getElementById("story");
  if (!addr) {
    box.replaceChildren(el("p", { class: "muted" }, "Type an address to see why it is, or is not, blocked."));
    await drawn("explain", t0, performance.now());
    return;
  }
  let s;
  try {
    s = await api("/dashboard/api/explain?addr=" + encodeURIComponent(addr));
  } catch (e) {
    showError(box, e);
    await drawn("explain", t0, performance.now());
    return;
  }
  const fetched = performance.now();
  const x = s.explanation;
  const refresh = () => loadExplain();
  const verdicts = { blocked: "BLOCKED", allowed: "ALLOWED", open: "OPEN" };
  const says = {
    blocked: "Traffic from " + x.address + " is dropped by every node.",
    allowed: "An allow entry covers " + x.address + ": no node drops it, whoever asks.",
    open: "No ban or allow covers " + x.address + ".",
  };
  const parts = [el("p", { id: "verdict", class: "verdict " + x.verdict }, el("strong", {}, verdicts[x.verdict]), " ", says[x.verdict])];
  if (x.bans_inside) parts.push(el("p", {}, `${count(x.bans_inside, "ban lies", "bans lie")} inside ${x.address}. `,
    el("a", { href: "/dashboard/?q=" + encodeURIComponent(x.address) }, "List them")));
  if (x.banned_by.length) {
    parts.push(el("h2", {}, "The ban in force"));
    x.banned_by.slice().reverse().forEach((d) => parts.push(decisionCard(d, x.verdict === "allowed" ? "ban (overridden)" : "ban", refresh)));
  }
  if (x.allowed_by.length || s.group_allows.length) {
    parts.push(el("h2", {}, "What saves it"));
    x.allowed_by.forEach((d) => parts.push(decisionCard(d, "allow", refresh)));
    s.group_allows.forEach((d) => parts.push(decisionCard(d, "group allow (" + d.group + " only)", refresh)));
  }
  const esc = s.offenders.map(([net, o]) => el("li", {}, `${net}: banned ${count(o.bans, "time", "times")} by detectors and reports, last at ${when(o.last)}; each new automatic ban lasts longer.`));
  parts.push(el("h2", {}, "Escalation history"), esc.length ? el("ul", { id: "escalation" }, esc)
    : el("p", { class: "muted", id: "escalation" }, "No automatic bans on record (an unban forgets them)."));
  if (s.pending.length) parts.push(el("h2", {}, "Reports waiting for a quorum"),
    el("ul", {}, s.pending.map((r) => el("li", {}, `${r.node} at ${when(r.at)}`))));
  const hist = s.history.map((h) => {
    const put = h.put, rm = h.remove;
    const what = put ? `${put.decision.action} ${put.decision.target} by ${origin(put.decision)}` +
      (put.decision.expires ? " until " + when(put.decision.expires) : " forever") : rm ? `${rm.action} of ${rm.target} lifted` : JSON.stringify(h);
    return el("tr", {}, el("td", { class: "num" }, (put || rm || {}).seq), el("td", {}, what),
      el("td", {}, put ? when(put.decision.updated) : ""));
  });
  parts.push(el("h2", {}, "Recent changes"),
    hist.length ? el("table", { id: "history" }, el("thead", {}, el("tr", {}, el("th", {}, "#"), el("th", {}, "change"), el("th", {}, "at"))), el("tbody", {}, hist))
      : el("p", { class: "muted" }, "None."),
    el("p", { class: "muted small" }, `From the newest ${count(s.history_examined, "stream event", "stream events")}.`));
  if (x.verdict !== "allowed" && !x.banned_by.length) parts.push(el("p", { class: "actions" }, allowButton(x.address, refresh)));
  else if (x.verdict === "blocked") parts.push(el("p", { class: "actions" }, allowButton(x.address, refresh)));
  box.replaceChildren(...parts);
  await drawn("explain", t0, fetched);
}

// ------------------------------------------------------------------ nodes

async function viewNodes() {
  const t0 = performance.now();
  main.replaceChildren(el("div", { class: "titlebar" }, el("h1", {}, "Nodes"), el("span", { id: "timing", class: "muted small" })), el("div", { id: "nodes-box" }));
  const box = document.getElementById("nodes-box");
  let n;
  try { n = await api("/dashboard/api/nodes"); } catch (e) { showError(box, e); return; }
  const fetched = performance.now();
  const rows = n.nodes.map((x) => {
    const state = x.revoked ? "revoked" : x.streams > 0 ? "connected" : x.last_seen ? "offline" : "never connected";
    return el("tr", { "data-node": x.name, class: state.replace(" ", "-") },
      el("td", {}, el("a", { href: "/dashboard/?node=" + encodeURIComponent(x.name) }, x.name)),
      el("td", {}, x.group || ""),
      el("td", {}, x.address || ""),
      el("td", {}, x.version || ""),
      el("td", { class: "state" }, el("span", { class: "dot" }), state),
      el("td", { title: when(x.last_seen) }, x.last_seen ? relative(x.last_seen) : "never"),
      el("td", { class: "num", title: x.version ? "applied through event " + x.cursor + " of " + n.seq : "no heartbeat yet" }, x.version ? x.lag : "–"),
      el("td", { class: "num" }, x.version ? x.bans : "–"),
      el("td", { class: "num" }, x.reported),
      el("td", { class: "actions" }, x.revoked ? el("span", { class: "muted small" }, "revoked " + relative(x.revoked)) :
        el("button", {
          type: "button", class: "danger small revoke", "data-node": x.name,
          onclick: async () => {
            const r = await confirmAction("Revoke " + x.name + "'s token?",
              x.name + " is cut off at once and its address is no longer allowed automatically. It needs a new token to join again.",
              [], "Revoke", () => api("/dashboard/api/nodes/revoke", { name: x.name }));
            if (r) { flash("Revoked " + x.name + ".", "ok"); viewNodes(); }
          },
        }, "Revoke token")));
  });
  box.replaceChildren(rows.length ? el("table", { id: "nodes" },
    el("thead", {}, el("tr", {}, ["Node", "Group", "Address", "Version", "State", "Last seen", "Stream lag", "Bans enforced", "Bans reported", ""].map((h) => el("th", {}, h)))),
    el("tbody", {}, rows)) : el("p", { class: "muted" }, "No node has joined yet: make a join token with palisade hub token create --kind join NAME."));
  await drawn("nodes", t0, fetched);
}

// ------------------------------------------------------------------- live

const COLORS = ["#c0392b", "#2471a3", "#b7950b", "#1e8449", "#7d3c98", "#ca6f1e", "#566573"];

function chart(a) {
  const W = 900, H = 220, L = 40, B = 24;
  const svgNS = "http://www.w3.org/2000/svg";
  const s = (tag, attrs) => {
    const e = document.createElementNS(svgNS, tag);
    for (const [k, v] of Object.entries(attrs)) e.setAttribute(k, v);
    return e;
  };
  const svg = s("svg", { viewBox: `0 0 ${W} ${H}`, id: "chart-svg", role: "img", "aria-label": "new bans per minute by rule" });
  const series = a.rules.slice(0, COLORS.length);
  let max = 1;
  for (const [, v] of series) for (const c of v) max = Math.max(max, c);
  const x = (i) => L + (i * (W - L - 8)) / (a.minutes - 1);
  const y = (c) => H - B - (c * (H - B - 10)) / max;
  for (const f of [0, 0.5, 1]) {
    const v = Math.round(max * f);
    svg.append(s("line", { x1: L, x2: W - 8, y1: y(v), y2: y(v), class: "grid" }));
    const t = s("text", { x: L - 6, y: y(v) + 4, "text-anchor": "end", class: "axis" });
    t.textContent = v;
    svg.append(t);
  }
  for (let i = 0; i < a.minutes; i += 30) {
    const t = s("text", { x: x(i), y: H - 6, "text-anchor": "middle", class: "axis" });
    const m = a.minutes - 1 - i;
    t.textContent = m ? "-" + (m >= 60 ? (m / 60).toFixed(m % 60 ? 1 : 0) + "h" : m + "m") : "now";
    svg.append(t);
  }
  series.forEach(([rule, v], k) => {
    const pts = v.map((c, i) => `${x(i).toFixed(1)},${y(c).toFixed(1)}`).join(" ");
    svg.append(s("polyline", { points: pts, fill: "none", stroke: COLORS[k], "stroke-width": 2, "data-rule": rule }));
  });
  const legend = el("ul", { class: "legend" }, series.map(([rule, v], k) =>
    el("li", {}, el("span", { class: "swatch" }), `${rule} (${v.reduce((p, c) => p + c, 0)})`)));
  // Colours through the CSSOM (the policy forbids inline style attributes).
  [...legend.querySelectorAll(".swatch")].forEach((sw, k) => { sw.style.background = COLORS[k]; });
  return el("div", { id: "chart" }, svg, series.length ? legend : el("p", { class: "muted" }, "No new bans in the last three hours."));
}

function topList(id, title, rows) {
  return el("section", { class: "card top", id },
    el("h3", {}, title),
    rows.length ? el("ol", {}, rows.map(([net, n]) => el("li", {},
      el("a", { href: "/dashboard/?q=" + encodeURIComponent(net) }, net), " ", el("span", { class: "muted" }, n + " new bans")))) :
      el("p", { class: "muted" }, "None in the last hour."));
}

function feedRow(item) {
  const put = item.put, rm = item.remove;
  if (!put && !rm) return null;
  const d = put ? put.decision : null;
  return el("tr", { class: put ? d.action : "removed", "data-target": put ? d.target : rm.target },
    el("td", {}, new Date().toLocaleTimeString()),
    el("td", {}, put ? (d.created === d.updated ? "new " : "updated ") + d.action : rm.action + " lifted"),
    el("td", { class: "target" }, el("a", { href: "/dashboard/explain?addr=" + encodeURIComponent(put ? d.target : rm.target) }, put ? d.target : rm.target)),
    el("td", {}, d ? d.rule || "" : ""),
    el("td", {}, d ? origin(d) : ""),
    el("td", {}, d ? (d.expires ? relative(d.expires) : "forever") : ""));
}

async function viewLive() {
  const t0 = performance.now();
  main.replaceChildren(
    el("div", { class: "titlebar" }, el("h1", {}, "Live"), el("span", { id: "counts", class: "muted" }), el("span", { id: "timing", class: "muted small" })),
    el("h2", {}, "New bans per minute, by rule (last 3 hours)"), el("div", { id: "chart-box" }),
    el("div", { class: "tops" }, el("div", { id: "top24" }), el("div", { id: "top48" })),
    el("h2", {}, "Changes as they happen ", el("span", { id: "live-state", class: "muted small" }, "connecting…")),
    el("table", { id: "feed" }, el("thead", {}, el("tr", {}, ["seen", "change", "target", "rule", "origin", "expires"].map((h) => el("th", {}, h)))), el("tbody", {})));
  await loadActivity();
  await drawn("live", t0, performance.now());
}

async function loadActivity() {
  let a;
  try { a = await api("/dashboard/api/activity"); } catch (e) { showError(document.getElementById("chart-box"), e); return; }
  const c = a.counts;
  const counts = document.getElementById("counts");
  if (!counts) return;
  counts.textContent = `${count(c.ban_hosts, "banned address", "banned addresses")}, ${count(c.ban_networks, "banned network", "banned networks")}, ${count(c.allows, "allow", "allows")}, ${count(a.streams, "node stream", "node streams")} open`;
  document.getElementById("chart-box").replaceChildren(chart(a.activity));
  document.getElementById("top24").replaceChildren(topList("top-v4", "Most active /24 (last hour)", a.activity.top24));
  document.getElementById("top48").replaceChildren(topList("top-v6", "Most active /48 (last hour)", a.activity.top48));
}

function liveFeed(item) {
  const tbody = document.querySelector("#feed tbody");
  if (!tbody) return;
  const row = feedRow(item);
  if (!row) return;
  row.classList.add("fresh");
  tbody.prepend(row);
  while (tbody.children.length > 100) tbody.lastChild.remove();
}

// ------------------------------------------------------------ live events

let activityTimer = null;

function connectEvents() {
  const es = new EventSource("/dashboard/api/events");
  const state = () => document.getElementById("live-state");
  es.onopen = () => { const s = state(); if (s) s.textContent = "connected"; };
  es.onerror = () => { const s = state(); if (s) s.textContent = "reconnecting…"; };
  es.addEventListener("lagged", () => { if (decisionsState && decisionsState.first) loadDecisions(); });
  es.onmessage = (ev) => {
    let item;
    try { item = JSON.parse(ev.data); } catch (_) { return; }
    liveDecision(item);
    liveFeed(item);
    if (document.getElementById("chart-box") && !activityTimer) {
      activityTimer = setTimeout(() => { activityTimer = null; loadActivity(); }, 2000);
    }
  };
}

// ------------------------------------------------------------------ start

const VIEWS = {
  "/dashboard/": ["decisions", viewDecisions],
  "/dashboard/explain": ["explain", viewExplain],
  "/dashboard/nodes": ["nodes", viewNodes],
  "/dashboard/live": ["live", viewLive],
};

function route() {
  const [name, view] = VIEWS[location.pathname] || VIEWS["/dashboard/"];
  for (const a of document.querySelectorAll("header nav a")) a.classList.toggle("active", a.dataset.view === name);
  decisionsState = null;
  return view();
}

window.addEventListener("popstate", route);
dialog.addEventListener("cancel", () => document.getElementById("confirm-cancel").click());
document.getElementById("logout").addEventListener("click", async () => {
  try { await api("/dashboard/logout", {}); } finally { location.assign("/dashboard/login"); }
});
route();
connectEvents();
