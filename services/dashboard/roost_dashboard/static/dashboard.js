// Roost dashboard live updates: server-sent events from /events/stream update the page in place.
(function () {
  "use strict";
  var status = document.getElementById("live");
  function say(text) { if (status) status.textContent = text; }

  function stateSpan(value) {
    var span = document.createElement("span");
    span.className = "state state-" + value;
    span.textContent = value;
    return span;
  }

  function onAlarm(ev) {
    var table = document.getElementById("alarms");
    if (table) {
      var body = table.tBodies[0];
      var old = document.getElementById("alarm-" + ev.uuid);
      var filter = table.getAttribute("data-filter");
      if (ev.action === "cleared" || (filter && filter !== ev.severity)) {
        if (old) old.remove();
      } else if (ev.html && (old || table.getAttribute("data-first-page") === "1")) {
        var tmp = document.createElement("tbody");
        tmp.innerHTML = ev.html.trim();
        var row = tmp.firstElementChild;
        row.setAttribute("data-rank", ev.rank);
        row.classList.add("flash");
        if (old) {
          old.replaceWith(row);
        } else {
          // Most severe first: before the first row of a less severe alarm.
          var ranks = { critical: 0, major: 1, minor: 2, warning: 3 };
          var before = null;
          for (var i = 0; i < body.rows.length; i++) {
            var r = ranks[body.rows[i].getAttribute("data-severity")];
            if (r !== undefined && r > ev.rank) { before = body.rows[i]; break; }
          }
          body.insertBefore(row, before);
        }
      }
      var count = document.getElementById("alarm-count");
      if (count) count.textContent = body.rows.length;
      var none = document.getElementById("no-alarms");
      if (none) none.hidden = body.rows.length > 0;
    }
    refreshOverview();
  }

  function onHost(ev) {
    var selectors = [];
    if (ev.hostname) selectors.push('[data-host="' + CSS.escape(ev.hostname) + '"]');
    if (ev.uuid) selectors.push('[data-host="' + CSS.escape(ev.uuid) + '"]', "#host-" + CSS.escape(ev.uuid));
    var seen = new Set();
    var matches = document.querySelectorAll(selectors.join(","));
    if (matches.length === 0 && document.getElementById("hosts")) {
      window.location.reload();  // a host this list has not shown yet
      return;
    }
    matches.forEach(function (el) {
      if (seen.has(el)) return;
      seen.add(el);
      ["administrative", "operational", "availability"].forEach(function (field) {
        el.querySelectorAll('[data-field="' + field + '"]').forEach(function (cell) {
          cell.replaceChildren(stateSpan(ev[field]));
        });
      });
      el.querySelectorAll('[data-field="task"]').forEach(function (cell) { cell.textContent = ev.task || ""; });
      el.querySelectorAll('[data-field="since"]').forEach(function (cell) { cell.textContent = ev.time || ""; });
      el.querySelectorAll("[data-when-admin]").forEach(function (button) {
        button.hidden = button.getAttribute("data-when-admin") !== ev.administrative;
      });
    });
    refreshOverview();
  }

  function onGroup(ev) {
    document.querySelectorAll('[data-group="' + CSS.escape(ev.name || "") + '"] [data-field="state"]').forEach(function (cell) {
      cell.replaceChildren(stateSpan(ev.state));
    });
    refreshRegions("group");
    refreshOverview();
  }

  // Regions marked data-refresh-on="<kind>" are fetched again (this page's URL) after such an
  // event and swapped in place: instance rows, reasons, active hosts follow without a reload.
  var regionTimer = {};
  function refreshRegions(kind) {
    var regions = document.querySelectorAll('[data-refresh-on~="' + kind + '"]');
    if (regions.length === 0 || regionTimer[kind]) return;
    regionTimer[kind] = setTimeout(function () {
      regionTimer[kind] = null;
      fetch(window.location.href, { credentials: "same-origin" }).then(function (r) {
        if (r.redirected || !r.ok) return null;
        return r.text();
      }).then(function (html) {
        if (!html) return;
        var doc = new DOMParser().parseFromString(html, "text/html");
        regions.forEach(function (region) {
          var fresh = doc.getElementById(region.id);
          if (fresh) region.replaceWith(fresh);
        });
      });
    }, 300);
  }

  var pending = null;
  function refreshOverview() {
    var box = document.getElementById("overview-live");
    if (!box || pending) return;
    pending = setTimeout(function () {
      pending = null;
      fetch("/fragments/overview", { credentials: "same-origin" }).then(function (r) {
        if (r.redirected || !r.ok) return null;
        return r.text();
      }).then(function (html) { if (html) box.innerHTML = html; });
    }, 200);
  }

  if (!window.EventSource) { say("live updates unavailable"); return; }
  var source = new EventSource("/events/stream");
  var opened = false;
  source.addEventListener("hello", function () {
    if (opened) { window.location.reload(); return; }  // back after a gap: catch up
    opened = true;
    say("live");
    document.body.setAttribute("data-live", "1");
  });
  source.addEventListener("alarm", function (e) { onAlarm(JSON.parse(e.data)); });
  source.addEventListener("host", function (e) { onHost(JSON.parse(e.data)); });
  source.addEventListener("group", function (e) { onGroup(JSON.parse(e.data)); });
  source.addEventListener("instance", function () { refreshRegions("group"); });
  source.addEventListener("reload", function () { window.location.reload(); });
  source.onerror = function () { say("reconnecting…"); document.body.removeAttribute("data-live"); };
})();
