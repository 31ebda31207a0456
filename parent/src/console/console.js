// The fleetls web console: the "SSL configuration" view over the admin API.
//
// Plain script, no build step. Every call sends the admin token (kept in
// sessionStorage, so it lives as long as the tab) as a bearer token; a 401
// returns to the login. Values from agents are untrusted: they are only ever
// written with textContent, never as HTML.
"use strict";

(() => {
  const TOKEN_KEY = "fleetls.adminToken";
  // /api/summary walks the whole registry: poll it gently. A campaign's
  // progress is cheap: poll it every second while one runs.
  const IDLE_POLL_MS = 3000;
  const RUNNING_POLL_MS = 1000;
  const SUMMARY_EVERY_RUNNING_POLLS = 5;
  const LIST_REFRESH_MS = 10000;
  const LIST_MIN_INTERVAL_RUNNING_MS = 3000;

  const $ = (id) => document.getElementById(id);

  const KIND_LABELS = {
    verify: "Verify SSL Switchover",
    reverify: "Reverify",
    switch: "Use SSL connection",
    "force-switch": "Force SSL Switchover",
    "switch-broker": "Use SSL connection for RabbitMQ",
    reissue: "CA rotation: re-issue",
  };
  const STATE_LABELS = {
    running: "running",
    finished: "finished",
    timed_out: "timed out",
    passed: "passed",
    failed: "failed",
    did_not_participate: "did not participate",
    acting: "acting",
    waiting: "waiting",
  };

  const state = {
    summary: null, // GET /api/summary
    campaign: null, // the newest campaign's progress
    settings: null, // GET /api/settings
    settingsDirty: false,
    busy: false, // an action request is in flight
    timer: null,
    pollAgain: false,
    tick: 0,
    listKey: "",
    listLoadedAt: 0,
    listSeq: 0,
    page: { offset: 0, limit: 100, total: 0 },
  };

  /** A refused or failed API call, with the parent's message. */
  class ApiError extends Error {
    constructor(status, message) {
      super(message);
      this.status = status;
    }
  }
  /** The token was refused: the page went back to the login. */
  class SignedOut extends Error {}

  function token() {
    return sessionStorage.getItem(TOKEN_KEY) || "";
  }

  async function request(method, path, body, bearer) {
    const headers = { Accept: "application/json", Authorization: "Bearer " + bearer };
    const init = { method, headers, cache: "no-store" };
    if (body !== undefined) {
      headers["Content-Type"] = "application/json";
      init.body = JSON.stringify(body);
    }
    let response;
    try {
      response = await fetch(path, init);
    } catch (e) {
      throw new ApiError(0, "The parent does not answer: " + e.message);
    }
    const text = await response.text();
    let data = null;
    if (text) {
      try {
        data = JSON.parse(text);
      } catch (_) {
        data = null;
      }
    }
    if (!response.ok) {
      const message = (data && data.error) || text || response.statusText;
      throw new ApiError(response.status, message);
    }
    return data;
  }

  /** Calls the admin API with the session's token; a 401 signs out. */
  async function api(method, path, body) {
    try {
      return await request(method, path, body, token());
    } catch (e) {
      if (e instanceof ApiError && e.status === 401) {
        signOut("The admin token was refused (wrong, or the parent has a new one): sign in again.");
        throw new SignedOut();
      }
      throw e;
    }
  }

  // ---- login ----------------------------------------------------------

  function showLogin(message) {
    clearTimeout(state.timer);
    $("console-view").hidden = true;
    $("session-bar").hidden = true;
    $("login-view").hidden = false;
    $("login-error").textContent = message || "";
    $("token").value = "";
    $("token").focus();
  }

  function signOut(message) {
    sessionStorage.removeItem(TOKEN_KEY);
    state.summary = null;
    state.campaign = null;
    state.settings = null;
    showLogin(message);
  }

  async function login(event) {
    event.preventDefault();
    const given = $("token").value.trim();
    if (!given) {
      $("login-error").textContent = "Give the admin token.";
      return;
    }
    $("login-button").disabled = true;
    $("login-error").textContent = "";
    try {
      await request("GET", "/api/summary", undefined, given);
      sessionStorage.setItem(TOKEN_KEY, given);
      await showConsole();
    } catch (e) {
      $("login-error").textContent =
        e.status === 401
          ? "This is not the admin token of this parent. Copy it again from DATA_DIR/admin.token."
          : e.message;
    } finally {
      $("login-button").disabled = false;
    }
  }

  async function showConsole() {
    $("login-view").hidden = true;
    $("console-view").hidden = false;
    $("session-bar").hidden = false;
    state.settingsDirty = false;
    await Promise.all([loadSettings(), loadLocations()]).catch(report);
    await poll();
  }

  // ---- notices --------------------------------------------------------

  function notify(message, kind) {
    $("notice").hidden = false;
    $("notice").className = "notice " + (kind || "info");
    $("notice-text").textContent = message;
  }

  function report(e) {
    if (e instanceof SignedOut) return;
    notify(e.message || String(e), "error");
  }

  // ---- polling --------------------------------------------------------

  function running() {
    return !!(state.campaign && state.campaign.state === "running");
  }

  let polling = null;

  /** Polls now (once, even if asked again meanwhile), then keeps polling. */
  async function poll() {
    if (polling) {
      state.pollAgain = true;
      return polling;
    }
    clearTimeout(state.timer);
    polling = pollOnce();
    try {
      await polling;
    } finally {
      polling = null;
    }
    if (state.pollAgain) {
      state.pollAgain = false;
      return poll();
    }
    clearTimeout(state.timer);
    if (token()) state.timer = setTimeout(poll, running() ? RUNNING_POLL_MS : IDLE_POLL_MS);
  }

  /** One poll: the summary (or, while a campaign runs, mostly its progress). */
  async function pollOnce() {
    state.tick += 1;
    try {
      if (running() && state.tick % SUMMARY_EVERY_RUNNING_POLLS !== 0) {
        state.campaign = await api("GET", "/api/campaigns/current");
        if (state.summary) state.summary.campaign = state.campaign;
      } else {
        const summary = await api("GET", "/api/summary");
        const wasGenerated = state.summary && state.summary.network.certificates_generated;
        state.summary = summary;
        state.campaign = summary.campaign;
        if (wasGenerated !== summary.network.certificates_generated) await loadSettings();
      }
      $("conn").textContent = "";
      $("conn").className = "conn";
      render();
      await refreshListIfChanged();
    } catch (e) {
      if (e instanceof SignedOut) return;
      $("conn").textContent = e.message;
      $("conn").className = "conn error";
    }
  }

  /** Reloads the list when the figures changed, and now and then anyway. */
  async function refreshListIfChanged() {
    const s = state.summary;
    const c = state.campaign;
    const key = JSON.stringify([
      s && s.network,
      s && s.summary,
      c && [c.id, c.state, c.passed, c.failed, c.did_not_participate, c.acting],
    ]);
    const age = Date.now() - state.listLoadedAt;
    if (running() && age < LIST_MIN_INTERVAL_RUNNING_MS) return;
    if (key !== state.listKey || age > LIST_REFRESH_MS) {
      state.listKey = key;
      await loadAgents();
    }
  }

  // ---- settings -------------------------------------------------------

  const SETTINGS_FIELDS = [
    ["set-port", "port"],
    ["set-local-parent-port", "local-parent-port"],
    ["set-names", "names"],
    ["set-ips", "ips"],
    ["set-broker-names", "broker-names"],
    ["set-broker-ips", "broker-ips"],
  ];

  async function loadSettings() {
    const view = await api("GET", "/api/settings");
    state.settings = view;
    if (!state.settingsDirty || view.frozen) fillSettings(view);
    renderSettingsLock();
  }

  function fillSettings(view) {
    for (const [id, key] of SETTINGS_FIELDS) {
      const value = view.settings[key];
      $(id).value = Array.isArray(value) ? value.join("; ") : String(value);
    }
    state.settingsDirty = false;
  }

  function renderSettingsLock() {
    const frozen = !!(state.settings && state.settings.frozen);
    for (const [id] of SETTINGS_FIELDS) {
      const input = $(id);
      input.readOnly = frozen;
      // An example value would read as a setting once it cannot be edited.
      if (input.dataset.example === undefined) input.dataset.example = input.placeholder;
      input.placeholder = frozen ? "none" : input.dataset.example;
    }
    $("settings-save").disabled = frozen || state.busy;
    $("settings-save").hidden = frozen;
    $("frozen-note").hidden = !frozen;
    $("settings-form").classList.toggle("frozen", frozen);
  }

  async function saveSettings(event) {
    event.preventDefault();
    const change = {};
    for (const [id, key] of SETTINGS_FIELDS) change[key] = $(id).value.trim();
    $("settings-error").textContent = "";
    $("settings-saved").textContent = "";
    $("settings-save").disabled = true;
    try {
      const view = await api("POST", "/api/settings", change);
      state.settings = view;
      fillSettings(view);
      $("settings-saved").textContent = "Settings saved.";
    } catch (e) {
      if (!(e instanceof SignedOut)) $("settings-error").textContent = e.message;
    } finally {
      renderSettingsLock();
    }
  }

  // ---- actions --------------------------------------------------------

  /** Whether each button may be used now, and if not, why. */
  function rules() {
    const s = state.summary;
    if (!s) return {};
    const n = s.network;
    const sum = s.summary;
    const c = state.campaign;
    const generated = n.certificates_generated;
    const tested =
      sum.passed + sum.with_errors > 0 || !!(c && (c.kind === "verify" || c.kind === "reverify"));
    const acceptOld = $("accept-old").checked;
    const rule = (ok, why) => (ok ? null : why);
    return {
      "btn-generate": generated
        ? "Certificates exist already (start over to make new ones)."
        : rule(
            sum.version_not_supporting_ssl === 0 || acceptOld,
            sum.version_not_supporting_ssl +
              " child(ren) run a version that does not support SSL: upgrade them, or tick “Accept old versions”."
          ),
      "btn-send": rule(generated, "Generate the certificates first."),
      "btn-verify": rule(generated, "Generate the certificates first."),
      "btn-reverify": rule(tested, "Run Verify SSL Switchover first."),
      "btn-switch": rule(tested, "Test first: Verify SSL Switchover."),
      "btn-switch-broker": rule(n.switched_to_ssl > 0, "No child is switched to SSL yet."),
      "btn-force": rule(generated, "Generate the certificates first."),
      "btn-without-ssl": null,
      "btn-reset": rule(generated, "There are no certificates yet."),
      "btn-rotate": rule(generated, "Generate the certificates first."),
    };
  }

  /** The CA rotation under way, if any. */
  function rotationUnderWay() {
    const s = state.summary;
    const r = s && s.network.ca_rotation;
    return r && r.phase !== "finished" ? r : null;
  }

  async function rotateCa() {
    const under = rotationUnderWay();
    const question = under
      ? "Take the next phase of the CA rotation now, without waiting for the agents that have not followed?"
      : "Rotate the CA? Every agent first trusts both CAs, is then re-issued under the new one, then drops the old one.";
    if (!window.confirm(question)) return;
    const r = await api("POST", "/api/ca/rotate", { advance: !!under });
    notify("CA rotation: phase " + r.rotation.phase + ". " + r.broker, "ok");
  }

  function renderButtons() {
    const r = rules();
    const blocked = running()
      ? "A campaign is running: wait for it to end."
      : state.busy
        ? "Working…"
        : null;
    let hint = "";
    for (const [id, why] of Object.entries(r)) {
      const button = $(id);
      // "Show without SSL" only reads: it stays usable during a campaign.
      const reason = id === "btn-without-ssl" ? (state.busy ? blocked : null) : blocked || why;
      button.disabled = !!reason || !state.summary;
      button.title = reason || "";
    }
    if (blocked) hint = blocked;
    else if (r["btn-generate"] && !state.summary.network.certificates_generated)
      hint = r["btn-generate"];
    $("actions-hint").textContent = hint;
    const old = state.summary ? state.summary.summary.version_not_supporting_ssl : 0;
    $("accept-old-hint").textContent =
      old > 0
        ? "(" + old + " child(ren) below " + state.summary.network.min_ssl_version + " counted as “version not supporting SSL”)"
        : "(count children too old for SSL as “version not supporting SSL”)";
  }

  /** Runs one action with every button disabled, then refreshes. */
  async function act(fn) {
    state.busy = true;
    renderButtons();
    renderSettingsLock();
    try {
      await fn();
    } catch (e) {
      report(e);
    } finally {
      state.busy = false;
      await poll();
      renderSettingsLock();
    }
  }

  function plural(n, one, many) {
    return n + " " + (n === 1 ? one : many || one + "s");
  }

  async function generate() {
    const r = await api("POST", "/api/certs/generate", { ignore_old: $("accept-old").checked });
    let message = "Certificates generated. Root CA " + r.ca_fingerprint + ".";
    if (r.old_versions && r.old_versions.length)
      message += " Counted as “version not supporting SSL”: " + r.old_versions.join(", ") + ".";
    notify(message, "ok");
    await loadSettings();
  }

  async function send() {
    const r = await api("POST", "/api/certs/send", {});
    let message =
      "Information queued for " + plural(r.queued, "child", "children") +
      " (" + r.already_have_certificate + " already hold a certificate, " +
      r.not_eligible + " not eligible).";
    if (r.unroutable && r.unroutable.length)
      message += " No queue for: " + r.unroutable.join(", ") + " — send again once they reconnect.";
    notify(message, r.unroutable && r.unroutable.length ? "warn" : "ok");
  }

  async function campaign(kind, extra) {
    const r = await api("POST", "/api/campaigns", Object.assign({ kind }, extra || {}));
    state.campaign = r.progress;
    let message = KIND_LABELS[kind] + " started for " + plural(r.plan.children.length, "child", "children") + ".";
    if (r.plan.broker_tls) message += " The broker answered AMQPS with " + r.plan.broker_tls + ".";
    notify(message, "ok");
  }

  async function forceSwitch() {
    const r = await api("POST", "/api/campaigns", { kind: "force-switch", dry_run: true });
    const dialog = $("force-dialog");
    $("force-summary").textContent =
      plural(r.plan.children.length, "eligible child", "eligible children") +
      " not yet on SSL will switch, tested or not.";
    const list = $("force-list");
    list.replaceChildren(...r.plan.at_risk.map((line) => item(line)));
    $("force-risk").hidden = r.plan.at_risk.length === 0;
    $("force-confirm").textContent =
      r.plan.at_risk.length === 0
        ? "Switch them to SSL"
        : "Switch anyway (" + plural(r.plan.at_risk.length, "child", "children") + " at risk)";
    const confirmed = await ask(dialog, "force-confirm", "force-cancel");
    if (confirmed) await campaign("force-switch");
  }

  async function withoutSsl() {
    const r = await api("GET", "/api/without-ssl");
    const fill = (listId, countId, entries) => {
      $(countId).textContent = String(entries.length);
      const shown = entries.slice(0, 500).map((e) => item(e.name, " — " + e.why));
      if (entries.length > 500) shown.push(item("… and " + (entries.length - 500) + " more"));
      if (entries.length === 0) shown.push(item("none"));
      $(listId).replaceChildren(...shown);
    };
    fill("without-ssl", "without-count-ssl", r.not_switched);
    fill("without-tls", "without-count-tls", r.not_on_tls);
    $("without-tls-note").textContent = r.broker_view
      ? "As RabbitMQ management sees the connections."
      : "RabbitMQ management is not configured (--management): this list is unknown.";
    await ask($("without-dialog"), "without-close", "without-close");
  }

  async function startOver() {
    $("reset-confirm-text").value = "";
    $("reset-confirm").disabled = true;
    const confirmed = await ask($("reset-dialog"), "reset-confirm", "reset-cancel");
    if (!confirmed) return;
    const r = await api("POST", "/api/certs/reset", { confirm: "reset" });
    notify("Started over: the old certificates were moved to " + r.moved_to + ".", "ok");
    await loadSettings();
  }

  /** Shows a modal dialog; resolves true when `okId` is clicked. */
  function ask(dialog, okId, cancelId) {
    return new Promise((resolve) => {
      const done = (value) => {
        $(okId).removeEventListener("click", ok);
        $(cancelId).removeEventListener("click", cancel);
        dialog.removeEventListener("cancel", cancel);
        if (dialog.open) dialog.close();
        resolve(value);
      };
      const ok = () => done(true);
      const cancel = () => done(false);
      $(okId).addEventListener("click", ok);
      if (cancelId !== okId) $(cancelId).addEventListener("click", cancel);
      dialog.addEventListener("cancel", cancel);
      dialog.showModal();
    });
  }

  function item(text, detail) {
    const li = document.createElement("li");
    li.textContent = text;
    if (detail) {
      const span = document.createElement("span");
      span.className = "hint";
      span.textContent = detail;
      li.append(span);
    }
    return li;
  }

  // ---- rendering ------------------------------------------------------

  function setText(id, value) {
    $(id).textContent = value === undefined || value === null ? "–" : String(value);
  }

  function render() {
    const s = state.summary;
    if (!s) return;
    const n = s.network;
    setText("count-certs", n.children_with_certificates);
    setText("count-eligible", n.eligible);
    setText("count-ssl", n.switched_to_ssl);
    setText("count-amqps", n.broker_tls);
    setText("count-online", n.online);
    setText("count-agents", n.agents);
    setText("phase", n.phase);
    $("phase").className = "phase phase-" + n.phase;
    setText("ca-fingerprint", n.ca_fingerprint || "not generated");
    setText("ssl-port", n.ssl_port ? "listening on " + n.ssl_port : "closed");
    setText("signing-key", n.signing_key);
    setText("soonest-expiry", n.soonest_expiry ? time(n.soonest_expiry * 1000) : "none");
    setText("count-revoked", n.revoked_certificates);
    setText("count-renewals", n.renewals_done);
    setText("count-renewals-failed", n.renewals_failed);
    const r = n.ca_rotation;
    setText(
      "ca-rotation",
      r
        ? r.phase + ": " + r.trusting_new + " of " + r.agents + " trust the new CA · " +
            r.on_new_ca + " on it · " + r.trusting_old + " still trust the old one" +
            (r.waiting ? " — waits: " + r.waiting : "")
        : "none"
    );
    setText("btn-rotate", rotationUnderWay() ? "Next phase of the CA rotation…" : "Rotate CA…");
    setText("trust-pending", n.pending);
    setText("trust-compromised", n.compromised);
    setText("trust-events", n.security_events);
    setText("trust-flagged", n.flagged_names || 0);
    setText(
      "enrollment-mode",
      n.open_enrollment
        ? "OPEN ENROLLMENT (" + n.open_enrollment + "): any broker user can obtain a certificate"
        : "tokens only"
    );
    $("enrollment").classList.toggle("bad", Boolean(n.open_enrollment));
    setText(
      "topology",
      n.topology
        ? "damaged and rebuilt " + n.topology.repairs + " time(s); last " +
            new Date(n.topology.last_at).toLocaleString() + ": " + n.topology.last
        : "intact"
    );
    $("topology").classList.toggle("bad", Boolean(n.topology));
    $("trust").classList.toggle("bad", n.compromised > 0 || n.security_events > 0);
    setText("queue-type", n.queue_type ? n.queue_type.type + " — " + n.queue_type.why : "–");
    renderNodes(n.nodes || []);
    const sum = s.summary;
    setText("sum-passed", sum.passed);
    setText("sum-errors", sum.with_errors);
    setText("sum-dnp", sum.did_not_participate);
    setText("sum-old", sum.version_not_supporting_ssl);
    setText("sum-mpos", sum.mpos);
    setText("sum-excluded", sum.excluded || 0);
    renderCampaign();
    renderButtons();
  }

  /** Each broker node's health, from management (only with --management). */
  function renderNodes(nodes) {
    $("nodes").hidden = nodes.length === 0;
    $("nodes-body").replaceChildren(
      ...nodes.map((node) => {
        const tr = document.createElement("tr");
        const alarms = [];
        if (node.mem_alarm) alarms.push("memory alarm");
        if (node.disk_free_alarm) alarms.push("disk alarm");
        const health = (node.running ? "up" : "DOWN") + (alarms.length ? ", " + alarms.join(", ") : "");
        tr.className = "node " + (node.running && !alarms.length ? "up" : "down");
        tr.dataset.node = node.name;
        tr.append(
          cell(node.name, "c-node"),
          cell(health, "c-health " + (node.running && !alarms.length ? "yes" : "no")),
          cell(node.connections, "c-connections"),
          cell(node.agents, "c-agents")
        );
        return tr;
      })
    );
  }

  function renderCampaign() {
    const c = state.campaign;
    $("campaign-none").hidden = !!c;
    $("campaign").hidden = !c;
    if (!c) return;
    const done = c.passed + c.failed + c.did_not_participate;
    setText("campaign-kind", KIND_LABELS[c.kind] || c.kind);
    setText("campaign-state", STATE_LABELS[c.state] || c.state);
    $("campaign-state").className = "badge state-" + c.state;
    const end = c.finished_at || Date.now();
    setText("campaign-elapsed", "elapsed " + duration(Math.max(0, end - c.started_at)));
    $("campaign-bar").max = Math.max(1, c.total);
    $("campaign-bar").value = done;
    setText("camp-done", done + " / " + c.total);
    setText("camp-passed", c.passed);
    setText("camp-failed", c.failed);
    setText("camp-dnp", c.did_not_participate);
    setText("camp-acting", c.acting);
    setText("camp-waiting", c.waiting);
    $("campaign-detail").textContent =
      "Started " + time(c.started_at) +
      (c.finished_at ? ", ended " + time(c.finished_at) : ", deadline " + time(c.deadline_at)) +
      ". At most " + c.window + " at once (up to " + c.max_acting + " so far).";
  }

  function duration(ms) {
    const total = Math.round(ms / 1000);
    const h = Math.floor(total / 3600);
    const m = Math.floor((total % 3600) / 60);
    const sec = total % 60;
    const pad = (x) => String(x).padStart(2, "0");
    return (h ? h + ":" + pad(m) : String(m)) + ":" + pad(sec);
  }

  function time(ms) {
    if (!ms) return "";
    const d = new Date(ms);
    const pad = (x) => String(x).padStart(2, "0");
    return (
      d.getFullYear() + "-" + pad(d.getMonth() + 1) + "-" + pad(d.getDate()) + " " +
      pad(d.getHours()) + ":" + pad(d.getMinutes()) + ":" + pad(d.getSeconds())
    );
  }

  /** The time of day for today, else the date. */
  function shortTime(ms) {
    if (!ms) return "";
    const full = time(ms);
    return new Date(ms).toDateString() === new Date().toDateString() ? full.slice(11) : full.slice(0, 10);
  }

  // ---- status list ----------------------------------------------------

  function listQuery() {
    const params = new URLSearchParams();
    params.set("offset", String(state.page.offset));
    params.set("limit", String(state.page.limit));
    params.set("filter", $("f-filter").value);
    const kind = $("f-kind").value;
    if (kind) params.set("kind", kind);
    const location = $("f-location").value.trim();
    if (location) params.set("location", location);
    const q = $("f-q").value.trim();
    if (q) params.set("q", q);
    return params.toString();
  }

  async function loadAgents() {
    const seq = ++state.listSeq;
    const page = await api("GET", "/api/agents?" + listQuery());
    if (seq !== state.listSeq) return; // a newer request is on its way
    state.listLoadedAt = Date.now();
    if (page.agents.length === 0 && page.total > 0 && state.page.offset > 0) {
      // The list shrank under the current page: go to its last page.
      state.page.offset = Math.max(0, Math.floor((page.total - 1) / state.page.limit) * state.page.limit);
      return loadAgents();
    }
    state.page.total = page.total;
    const nodes = page.nodes || {};
    $("agents-body").replaceChildren(...page.agents.map((agent) => row(agent, nodes[agent.id])));
    $("agents-empty").hidden = page.agents.length > 0;
    const first = page.total === 0 ? 0 : page.offset + 1;
    const last = page.offset + page.agents.length;
    const number = (n) => n.toLocaleString("en-US");
    $("page-info").textContent =
      number(first) + "–" + number(last) + " of " + number(page.total) + " " +
      (page.total === 1 ? "agent" : "agents");
    $("page-prev").disabled = page.offset === 0;
    $("page-next").disabled = last >= page.total;
  }

  async function loadLocations() {
    const locations = await api("GET", "/api/locations");
    $("locations").replaceChildren(
      ...locations.map((l) => {
        const option = document.createElement("option");
        option.value = l;
        return option;
      })
    );
  }

  function cell(text, className, title) {
    const td = document.createElement("td");
    const empty = text === undefined || text === null || text === "";
    td.textContent = empty ? "—" : String(text);
    td.className = (className || "") + (empty ? " none" : "");
    if (title) td.title = title;
    return td;
  }

  function yesNo(value, className) {
    return cell(value ? "yes" : "no", className + (value ? " yes" : " no"));
  }

  function stepText(step, result, name) {
    if (step) return step.message;
    if (!result) return "";
    if (result.state === "acting" && result.step === name) return "running…";
    if (result.state === "waiting") return "waiting";
    return "";
  }

  function row(agent, node) {
    const tr = document.createElement("tr");
    tr.dataset.id = agent.id;
    const r = agent.last_result;
    if (r) tr.classList.add("result-" + r.state);
    const names = agent.hostnames.concat(agent.ips).join(", ");
    tr.append(
      cell(agent.name, "c-name", agent.id + (names ? "\n" + names : "")),
      cell(agent.silent ? "silent" : agent.online ? "online" : "offline",
        "c-online " + (agent.silent ? "warn" : agent.online ? "yes" : "no"),
        (agent.connected ? "connected (the broker says); " : "") +
        (agent.silent ? "no state report for too long; " : "") +
        "last report " + time(agent.last_seen)),
      cell(agent.kind, "c-kind"),
      cell(agent.version, "c-version" + (agent.ssl_capable ? "" : " old"),
        agent.ssl_capable ? "" : "this version does not support SSL"),
      cell(agent.location, "c-location"),
      yesNo(agent.has_certificate, "c-cert"),
      yesNo(agent.ssl, "c-ssl"),
      yesNo(agent.broker_tls, "c-amqps"),
      cell(node, "c-node"),
      cell(r ? STATE_LABELS[r.state] || r.state : "not tested", "c-result"),
      cell(stepText(r && r.cert_test, r, "cert-test"),
        "c-step1" + (r && r.cert_test ? (r.cert_test.ok ? " ok" : " bad") : "")),
      cell(stepText(r && r.ssl_port, r, "ssl-port"),
        "c-step2" + (r && r.ssl_port ? (r.ssl_port.ok ? " ok" : " bad") : "")),
      cell(r && (r.cause || (r.ssl_port && r.ssl_port.cause) || (r.cert_test && r.cert_test.cause)), "c-cause"),
      cell(r ? shortTime(r.finished_at || r.started_at) : "", "c-time",
        r ? time(r.finished_at || r.started_at) : ""),
      cell(agent.refusal, "c-refusal"),
      cell(agent.certificate_not_after ? shortTime(agent.certificate_not_after * 1000) : "",
        "c-expiry", agent.certificate_not_after ? time(agent.certificate_not_after * 1000) : ""),
      admissionCell(agent)
    );
    return tr;
  }

  /** The agent's admission; a pending one gets Accept and Reject. */
  function admissionCell(agent) {
    const td = cell(agent.compromised ? "COMPROMISED" : agent.admission,
      "c-admission " + (agent.compromised ? "bad" : agent.admission),
      agent.compromised ? "it pinned another parent key: it obeys someone else" : "");
    if (agent.admission === "pending") {
      const button = (label, path, cls) => {
        const b = document.createElement("button");
        b.type = "button";
        b.className = "small " + cls;
        b.textContent = label;
        b.dataset.action = path;
        b.addEventListener("click", () => act(async () => {
          await api("POST", "/api/agents/" + path, { agents: [agent.id] });
          notify(label + "ed: " + agent.name, "ok");
          await pollOnce();
          await loadAgents();
        }));
        return b;
      };
      td.append(" ", button("Accept", "accept", "primary"), " ", button("Reject", "reject", "danger"));
    }
    return td;
  }

  /** The enrollment tokens (never the token itself, but once, when made). */
  async function renderTokens() {
    const tokens = await api("GET", "/api/enroll");
    const shown = tokens.map((t) => {
      const li = item(
        t.id + "  " + t.state + "  " + t.kinds.join(",") + "  " + t.name_pattern + "  " +
          t.uses + "/" + t.max_uses + " uses  until " + time(t.expires_at),
        t.admitted.length ? " — admitted " + t.admitted.join(", ") : ""
      );
      if (t.state === "usable") {
        const b = document.createElement("button");
        b.type = "button";
        b.className = "small danger";
        b.textContent = "Revoke";
        b.addEventListener("click", () => act(async () => {
          await api("POST", "/api/enroll/revoke", { id: t.id });
          notify("token " + t.id + " revoked", "ok");
          await renderTokens();
        }));
        li.append(" ", b);
      }
      return li;
    });
    $("enroll-list").replaceChildren(...shown);
  }

  async function enrollTokens() {
    $("enroll-made").hidden = true;
    $("enroll-token").textContent = "";
    await renderTokens();
    await ask($("enroll-dialog"), "enroll-close", "enroll-close");
    $("enroll-token").textContent = "";
  }

  async function createToken(event) {
    event.preventDefault();
    await act(async () => {
      const made = await api("POST", "/api/enroll", {
        kind: $("enroll-kind").value,
        name: $("enroll-name").value,
        uses: Number($("enroll-uses").value),
        expires: $("enroll-expires").value,
      });
      $("enroll-token").textContent = made.token;
      $("enroll-made").hidden = false;
      await renderTokens();
    });
  }

  async function securityEvents() {
    const r = await api("GET", "/api/security");
    const counts = Object.entries(r.counts).map(([k, v]) => k + " " + v);
    $("security-counts").textContent = counts.length ? counts.join(" · ") : "None recorded.";
    const shown = r.recent.map((e) =>
      item(time(e.at) + "  " + e.kind + "  " + (e.name || e.agent || "-"), " — " + e.detail));
    $("security-list").replaceChildren(...shown);
    await ask($("security-dialog"), "security-close", "security-close");
  }

  function filtersChanged() {
    state.page.offset = 0;
    loadAgents().catch(report);
  }

  let searchTimer = null;
  function searchTyped() {
    clearTimeout(searchTimer);
    searchTimer = setTimeout(filtersChanged, 300);
  }

  // ---- wiring ---------------------------------------------------------

  function wire() {
    $("login-form").addEventListener("submit", login);
    $("logout").addEventListener("click", () => signOut(""));
    $("notice-close").addEventListener("click", () => ($("notice").hidden = true));
    $("settings-form").addEventListener("submit", saveSettings);
    $("settings-form").addEventListener("input", () => {
      state.settingsDirty = true;
      $("settings-saved").textContent = "";
    });
    $("accept-old").addEventListener("change", renderButtons);
    const on = (id, fn) => $(id).addEventListener("click", () => act(fn));
    on("btn-generate", generate);
    on("btn-send", send);
    on("btn-verify", () => campaign("verify"));
    on("btn-reverify", () => campaign("reverify"));
    on("btn-switch", () => campaign("switch"));
    on("btn-switch-broker", () => campaign("switch-broker"));
    on("btn-force", forceSwitch);
    on("btn-without-ssl", withoutSsl);
    on("btn-security", securityEvents);
    on("btn-enroll", enrollTokens);
    $("enroll-form").addEventListener("submit", createToken);
    on("btn-reset", startOver);
    on("btn-rotate", rotateCa);
    $("reset-confirm-text").addEventListener("input", () => {
      $("reset-confirm").disabled = $("reset-confirm-text").value.trim() !== "reset";
    });
    $("filters").addEventListener("submit", (e) => e.preventDefault());
    $("f-filter").addEventListener("change", filtersChanged);
    $("f-kind").addEventListener("change", filtersChanged);
    $("f-location").addEventListener("change", filtersChanged);
    $("f-q").addEventListener("input", searchTyped);
    $("page-size").addEventListener("change", () => {
      state.page.limit = Number($("page-size").value);
      filtersChanged();
    });
    $("page-prev").addEventListener("click", () => {
      state.page.offset = Math.max(0, state.page.offset - state.page.limit);
      loadAgents().catch(report);
    });
    $("page-next").addEventListener("click", () => {
      state.page.offset += state.page.limit;
      loadAgents().catch(report);
    });
    document.addEventListener("visibilitychange", () => {
      if (!document.hidden && token() && !$("console-view").hidden) poll();
    });
  }

  wire();
  if (token()) showConsole().catch(report);
  else showLogin("");
})();
