// linewatch board: live queue. Written here, no library: an EventSource tells of new alerts,
// and the rows are fetched again with the page's own filters, so order and filters hold.
// A closed stream (board restarted, proxy answered 502/401: browsers give up then) is opened
// again after a backoff; on every open the rows are fetched, for what was missed meanwhile.
// The stream also tells the ingest's state (`ingest` events: on open and on each change): while
// the board reads no alerts (brokers unreachable, database locked) the chip says the feed is
// down; when it is back the rows are fetched again. The page starts with the server's word
// (data-feed on the chip). A stream that is down says so first: its feed state is stale then.
// Only a tab that is shown holds a stream. Browsers open at most six HTTP/1.1 connections to
// one host and each stream keeps one, so with six queue tabs open a seventh page of the board
// would not load at all. A hidden tab closes its stream (a tab opened in the background never
// opens one) and opens it again when shown; that open fetches the rows, as any open does.
(function () {
  "use strict";
  var rows = document.getElementById("rows");
  var count = document.getElementById("untriaged");
  var pager = document.getElementById("pager");
  var live = document.getElementById("live");
  if (!rows || !window.EventSource) return;
  var LIVE = "new alerts appear without reloading";
  var pending = null, seq = 0, es = null, delay = 1000, waiting = 0, retry = null;
  var streamDown = false, fetchDown = false;
  // A board just started says "connecting" until its first read, or until 10 s without
  // one (then the feed is down since it started: the server's `connecting` turns false).
  var feedConnecting = live.getAttribute("data-feed") === "connecting";
  var feedDown = feedConnecting || live.getAttribute("data-feed") === "down";
  var feedTitle = live.title, feedText = live.textContent;
  function hhmm(ms) {
    return new Date(ms).toLocaleTimeString([], { hour: "2-digit", minute: "2-digit" });
  }
  function since(ms) {
    var d = new Date(ms), now = new Date();
    return d.toDateString() === now.toDateString() ? d.toLocaleTimeString() : d.toLocaleString();
  }
  function feed(j) {
    var was = feedDown;
    feedDown = !j.ok;
    feedConnecting = feedDown && !!j.connecting;
    if (feedConnecting) {
      feedText = "connecting to the feed\u2026";
      feedTitle = "The board has just started and is not reading alerts yet: " +
        (j.detail || "connecting to the alert topic") +
        ". If the brokers do not answer within 10 s this says the feed is down.";
    } else if (feedDown) {
      feedText = "feed down since " + hhmm(j.since_ms) + " \u2014 alerts delayed";
      feedTitle = "No new alerts reach the board since " + since(j.since_ms) + ": " +
        (j.detail || "not reading the alert topic") +
        ". Alerts raised meanwhile are not shown yet; the list catches up when the feed is back.";
    }
    show();
    // Back: what was stored meanwhile (the open's fetch may have run before it was).
    if (was && !feedDown) later(150);
  }
  function show() {
    var text = "live", title = LIVE, state = "live";
    if (streamDown) {
      state = "offline";
      text = waiting ? "offline \u2014 retrying" : "reconnecting\u2026";
      title = "No connection to the board" +
        (waiting ? "; trying again in " + waiting / 1000 + " s" : "; trying again") +
        ". New alerts do not appear meanwhile; the list catches up when it is back.";
    } else if (feedConnecting) {
      state = "connecting";
      text = feedText;
      title = feedTitle;
    } else if (feedDown) {
      state = "feed-down";
      text = feedText;
      title = feedTitle;
    } else if (fetchDown) {
      state = "fetch-failed";
      text = "update failed";
      title = "The list could not be fetched again and may be out of date; retrying.";
    }
    live.classList.toggle("down", streamDown || (feedDown && !feedConnecting) || fetchDown);
    live.classList.toggle("connecting", !streamDown && feedConnecting);
    live.setAttribute("data-state", state);
    live.textContent = text;
    live.title = title;
  }
  // The detector filter's choices as the board knows them now (a detector whose first
  // alert came after the page loaded is added; the choice made stays chosen).
  function detectors(names) {
    var sel = document.querySelector("select[name=detector]");
    if (!sel) return;
    var have = {};
    for (var i = 1; i < sel.options.length; i++) have[sel.options[i].value] = 1;
    names.forEach(function (n) {
      if (have[n]) return;
      var o = document.createElement("option");
      o.value = n;
      o.textContent = n;
      var at = null;
      for (var k = 1; k < sel.options.length; k++) {
        if (sel.options[k].value > n) { at = sel.options[k]; break; }
      }
      sel.insertBefore(o, at);
    });
  }
  function later(ms) {
    // Bursts of commits become one fetch.
    if (!pending) pending = setTimeout(refresh, ms);
  }
  function refresh() {
    pending = null;
    var mine = ++seq;
    fetch("queue/rows" + window.location.search, { credentials: "same-origin", cache: "no-store" })
      .then(function (r) { if (!r.ok) throw new Error(r.status); return r.json(); })
      .then(function (j) {
        if (mine !== seq) return; // a later fetch answers for the page
        var before = {};
        rows.querySelectorAll("tr[data-alert]").forEach(function (tr) { before[tr.dataset.alert] = 1; });
        rows.innerHTML = j.rows;
        count.textContent = j.untriaged;
        if (pager && typeof j.pager === "string") pager.innerHTML = j.pager;
        if (j.detectors) detectors(j.detectors);
        rows.querySelectorAll("tr[data-alert]").forEach(function (tr) {
          if (!before[tr.dataset.alert]) tr.classList.add("fresh");
        });
        fetchDown = false;
        show();
      })
      .catch(function () {
        if (mine !== seq) return;
        fetchDown = true;
        show();
        // While the stream is down its next open fetches anyway.
        if (!streamDown) later(5000);
      });
  }
  function connect() {
    waiting = 0;
    retry = null;
    if (document.hidden) return; // opened when shown
    if (streamDown) show();
    es = new EventSource("events");
    es.addEventListener("alerts", function () { later(150); });
    es.addEventListener("ingest", function (e) {
      var j;
      try { j = JSON.parse(e.data); } catch (err) { return; }
      feed(j);
    });
    es.onopen = function () {
      delay = 1000;
      streamDown = false;
      show();
      refresh();
    };
    es.onerror = function () {
      streamDown = true;
      // CONNECTING: the browser retries by itself. CLOSED: it never will; we do.
      if (es.readyState === EventSource.CLOSED && !waiting) {
        waiting = delay;
        delay = Math.min(delay * 2, 30000);
        retry = setTimeout(connect, waiting);
      }
      show();
    };
  }
  document.addEventListener("visibilitychange", function () {
    if (document.hidden) {
      if (es) es.close();
      es = null;
      if (retry) clearTimeout(retry);
      retry = null;
      waiting = 0;
    } else if (!es) {
      delay = 1000;
      connect();
    }
  });
  connect();
})();
