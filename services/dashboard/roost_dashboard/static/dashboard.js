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
      var up = ev.operational === "enabled" && ev.availability === "available";
      el.querySelectorAll('[data-field="uptime"]').forEach(function (cell) {
        cell.setAttribute("data-since", ev.time || "");
        if (up && ev.time) cell.setAttribute("data-up", "yes"); else cell.removeAttribute("data-up");
        cell.textContent = up && ev.time ? duration(ev.time) : "—";
      });
      el.querySelectorAll("[data-when-admin]").forEach(function (button) {
        button.hidden = button.getAttribute("data-when-admin") !== ev.administrative;
      });
    });
    var timeline = document.getElementById("host-timeline");
    if (timeline) {
      var of = timeline.getAttribute("data-timeline-of");
      if (of === ev.hostname || of === ev.uuid) refreshTimeline(timeline);
    }
    refreshOverview();
  }

  // The host page's timeline (chart and table) fetched again after a transition of its host;
  // several events in a row make one fetch.
  var timelineTimer = null;
  function refreshTimeline(section) {
    if (timelineTimer) return;
    timelineTimer = setTimeout(function () {
      timelineTimer = null;
      var of = section.getAttribute("data-timeline-of");
      fetch("/fragments/hosts/" + encodeURIComponent(of) + "/timeline", { credentials: "same-origin" }).then(function (r) {
        if (r.redirected || !r.ok) return null;
        return r.text();
      }).then(function (html) {
        if (!html) return;
        var doc = new DOMParser().parseFromString(html, "text/html");
        var fresh = doc.getElementById("host-timeline"), old = document.getElementById("host-timeline");
        if (fresh && old) old.replaceWith(fresh);
      });
    }, 100);
  }

  // Uptime: time since the host last became enabled-available, as the server words it.
  function duration(since) {
    var t = Date.parse(since);
    if (isNaN(t)) return "—";
    var s = Math.max(Math.floor((Date.now() - t) / 1000), 0);
    var d = Math.floor(s / 86400), h = Math.floor(s % 86400 / 3600), m = Math.floor(s % 3600 / 60);
    if (d) return d + "d " + h + "h";
    if (h) return h + "h " + m + "m";
    return m ? m + "m " + (s % 60) + "s" : s + "s";
  }
  setInterval(function () {
    document.querySelectorAll('[data-field="uptime"][data-up]').forEach(function (cell) {
      cell.textContent = duration(cell.getAttribute("data-since"));
    });
  }, 10000);

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

  // Update strategy progress (software.strategy.changed): the event carries everything the
  // progress bar, state, current step and reason show, so they are patched at once, wherever
  // they are (the software page, the overview's update card). The stages table, which the event
  // does not carry, is fetched again; a strategy the page does not show yet (planned since the
  // page loaded) brings its whole section.
  function onStrategy(ev) {
    document.querySelectorAll("[data-strategy-live]").forEach(function (box) {
      var shows = box.getAttribute("data-show-states");
      if (!shows && box.getAttribute("data-uuid") !== ev.uuid) return;
      if (box.getAttribute("data-uuid") !== ev.uuid) {  // another strategy: its version unknown here
        box.querySelectorAll('[data-sw="version"]').forEach(function (el) { el.textContent = ""; });
      }
      box.setAttribute("data-uuid", ev.uuid || "");
      var done = ev.steps_done || 0, total = ev.steps_total || 0;
      box.querySelectorAll('[data-sw="progress"]').forEach(function (bar) {
        bar.setAttribute("max", String(total || 1));
        bar.setAttribute("value", String(done));
        bar.setAttribute("aria-valuetext", done + " of " + total + " steps");
        bar.textContent = done + " of " + total;
      });
      box.querySelectorAll('[data-sw="steps"]').forEach(function (el) { el.textContent = done + " of " + total + " steps"; });
      box.querySelectorAll('[data-sw="state"]').forEach(function (el) { el.replaceChildren(stateSpan(ev.state)); });
      box.querySelectorAll('[data-sw="release"]').forEach(function (el) { el.textContent = ev.release || ""; });
      box.querySelectorAll('[data-sw="current"]').forEach(function (el) { el.textContent = ev.current || "—"; });
      box.querySelectorAll('[data-sw="reason"]').forEach(function (el) { el.textContent = ev.reason || ""; el.hidden = !ev.reason; });
      if (shows) {  // the overview's card: shown while an update runs (or failed)
        var on = shows.split(" ").indexOf(ev.state) >= 0;
        box.hidden = !on;
        var none = box.parentNode.querySelector('[data-sw="none"]');
        if (none) none.hidden = on;
      }
    });
    document.querySelectorAll("[data-when-strategy]").forEach(function (el) {
      el.hidden = el.getAttribute("data-when-strategy").split(" ").indexOf(ev.state) < 0;
    });
    var section = document.getElementById("strategy");
    if (section) {
      var whole = section.getAttribute("data-uuid") !== ev.uuid;
      refreshPart("strategy", whole ? "strategy" : "strategy-stages");
    }
  }

  // A part of the software page fetched again (/fragments/software/<part>) and the element
  // with id ``target`` swapped in place; several events in a row make one fetch.
  var partTimer = {};
  function refreshPart(part, target) {
    if (!document.getElementById(target)) return;
    var key = part + " " + target;
    if (partTimer[key]) return;
    partTimer[key] = setTimeout(function () {
      partTimer[key] = null;
      fetch("/fragments/software/" + part, { credentials: "same-origin" }).then(function (r) {
        if (r.redirected || !r.ok) return null;
        return r.text();
      }).then(function (html) {
        if (!html) return;
        var doc = new DOMParser().parseFromString(html, "text/html");
        var fresh = doc.getElementById(target), old = document.getElementById(target);
        if (fresh && old) old.replaceWith(fresh);
      });
    }, 250);
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
  // From the event number the page was rendered at: what happened meanwhile is replayed.
  var seq = document.body.getAttribute("data-live-seq");
  var source = new EventSource("/events/stream" + (seq ? "?since=" + encodeURIComponent(seq) : ""));
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
  source.addEventListener("strategy", function (e) { onStrategy(JSON.parse(e.data)); });
  source.addEventListener("swhost", function () { refreshPart("deploy", "software-deploy"); });
  source.addEventListener("release", function () { refreshPart("releases", "software-releases"); });
  source.addEventListener("reload", function () { window.location.reload(); });
  // The token was revoked: stop listening; the reload lands on the login page.
  source.addEventListener("revoked", function () {
    source.close();
    say("logged out");
    window.location.reload();
  });
  source.onerror = function () { say("reconnecting…"); document.body.removeAttribute("data-live"); };
})();
