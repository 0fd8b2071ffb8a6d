// The console's live parts, without a build step: one EventSource per page. "changed" means the
// bus changed; the queue then fetches its items and merges them in by id (an item someone is
// typing in is left alone), other live pages reload their table. "status" shows the banner
// while the bus reconnects.
(function () {
  "use strict";
  var live = document.body.dataset.live;
  if (!live || !window.EventSource) { return; }
  var banner = document.getElementById("bus-status");
  var busy = false, again = false;

  function mergeItems(html) {
    var box = document.getElementById("items");
    var next = document.createElement("div");
    next.innerHTML = html;
    var keep = {};
    Array.prototype.forEach.call(box.querySelectorAll("article.item"), function (el) {
      if (el.contains(document.activeElement) || el.dataset.dirty === "1") { keep[el.id] = el; }
    });
    var nodes = [];
    Array.prototype.forEach.call(next.children, function (el) {
      nodes.push(keep[el.id] || el);
    });
    box.replaceChildren.apply(box, nodes);
    var count = document.getElementById("count");
    if (count) { count.textContent = String(box.querySelectorAll("article.item").length); }
  }

  function refresh() {
    if (busy) { again = true; return; }
    busy = true;
    var url = live === "queue" ? "/queue/items" : window.location.href;
    fetch(url, { credentials: "same-origin", headers: { "Accept": "text/html" } })
      .then(function (r) {
        if (r.redirected || r.status === 401) { window.location.reload(); return Promise.reject(r.status); }
        return r.ok ? r.text() : Promise.reject(r.status);
      })
      .then(function (html) {
        if (live === "queue") { mergeItems(html); return; }
        var doc = new DOMParser().parseFromString(html, "text/html");
        var fresh = doc.getElementById("live"), old = document.getElementById("live");
        if (fresh && old) { old.replaceWith(fresh); }
      })
      .catch(function () { /* the next change tries again */ })
      .then(function () {
        busy = false;
        if (again) { again = false; refresh(); }
      });
  }

  // a decision is sent once: a second click while the first is on its way does nothing
  document.addEventListener("submit", function (ev) {
    var form = ev.target;
    if (form.dataset.sent === "1") { ev.preventDefault(); return; }
    form.dataset.sent = "1";
  });

  document.addEventListener("input", function (ev) {
    var item = ev.target.closest && ev.target.closest("article.item");
    if (item) { item.dataset.dirty = "1"; }
  });

  var source = new EventSource("/events");
  var first = true;
  source.addEventListener("changed", function () {
    if (first) { first = false; return; }  // the page was rendered with this version
    refresh();
  });
  // every 15 s: ages, deadlines and expired claims move even when the bus is quiet
  source.addEventListener("tick", function () { if (live === "queue") { refresh(); } });
  source.addEventListener("status", function (ev) {
    if (banner) { banner.hidden = ev.data === "connected"; }
  });
  source.onerror = function () { if (banner) { banner.hidden = false; } };
  source.onopen = function () { refresh(); };
})();
