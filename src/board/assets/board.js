// linewatch board: live queue. Written here, no library: an EventSource tells of new alerts,
// and the rows are fetched again with the page's own filters, so order and filters hold.
(function () {
  "use strict";
  var rows = document.getElementById("rows");
  var count = document.getElementById("untriaged");
  var live = document.getElementById("live");
  if (!rows || !window.EventSource) return;
  var pending = null;
  function refresh() {
    pending = null;
    fetch("queue/rows" + window.location.search, { credentials: "same-origin", cache: "no-store" })
      .then(function (r) { if (!r.ok) throw new Error(r.status); return r.json(); })
      .then(function (j) {
        var before = {};
        rows.querySelectorAll("tr[data-alert]").forEach(function (tr) { before[tr.dataset.alert] = 1; });
        rows.innerHTML = j.rows;
        count.textContent = j.untriaged;
        rows.querySelectorAll("tr[data-alert]").forEach(function (tr) {
          if (!before[tr.dataset.alert]) tr.classList.add("fresh");
        });
      })
      .catch(function () { live.classList.add("down"); });
  }
  var es = new EventSource("events");
  es.addEventListener("alerts", function () {
    // Bursts of commits become one fetch.
    if (!pending) pending = setTimeout(refresh, 150);
  });
  es.onopen = function () { live.classList.remove("down"); };
  es.onerror = function () { live.classList.add("down"); };
})();
