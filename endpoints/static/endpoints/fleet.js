// The fleet dashboard refreshes itself: it fetches the JSON view every few seconds and
// swaps in each cluster's server-rendered HTML (tiles, sparklines, topology, alerts) when
// it changed. No framework, no build step. window.pgwFleet exposes counters for tests.
(function () {
  "use strict";
  var root = document.getElementById("pgw-fleet");
  if (!root) {
    return;
  }
  var container = document.getElementById("pgw-clusters");
  var status = document.getElementById("pgw-fleet-status");
  var url = root.dataset.url;
  var intervalMs = Math.max(1, Number(root.dataset.refreshS) || 3) * 1000;
  var shown = {}; // dom id -> the HTML last swapped in (or rendered with the page)
  var fleet = (window.pgwFleet = { refreshes: 0, failures: 0, lastUpdate: null, lastError: null });
  var timer = null;

  Array.prototype.forEach.call(container.querySelectorAll(".pgw-cluster"), function (node) {
    shown[node.id] = null; // unknown: replaced by the first refresh's HTML
  });

  function element(html) {
    var template = document.createElement("template");
    template.innerHTML = html.trim();
    return template.content.firstElementChild;
  }

  function apply(data) {
    var wanted = {};
    var previous = null;
    data.clusters.forEach(function (cluster) {
      wanted[cluster.dom_id] = true;
      var current = document.getElementById(cluster.dom_id);
      if (!current || shown[cluster.dom_id] !== cluster.html) {
        var fresh = element(cluster.html);
        if (current) {
          container.replaceChild(fresh, current);
        } else if (previous && previous.nextSibling) {
          container.insertBefore(fresh, previous.nextSibling);
        } else if (previous) {
          container.appendChild(fresh);
        } else {
          container.insertBefore(fresh, container.firstChild);
        }
        shown[cluster.dom_id] = cluster.html;
        current = fresh;
      }
      previous = current;
    });
    Array.prototype.slice.call(container.children).forEach(function (node) {
      if (!wanted[node.id]) {
        container.removeChild(node);
        delete shown[node.id];
      }
    });
    if (!data.clusters.length && data.empty_html) {
      container.innerHTML = data.empty_html;
    }
  }

  function report(text, stale) {
    status.textContent = text;
    root.classList.toggle("pgw-stale", stale);
  }

  function schedule() {
    clearTimeout(timer);
    timer = setTimeout(refresh, intervalMs);
  }

  function refresh() {
    if (document.hidden) {
      return; // resumed by visibilitychange
    }
    var controller = window.AbortController ? new AbortController() : null;
    var abort = controller ? setTimeout(function () { controller.abort(); }, intervalMs * 3) : null;
    fetch(url, {
      headers: { Accept: "application/json" },
      credentials: "same-origin",
      cache: "no-store",
      signal: controller ? controller.signal : undefined,
    })
      .then(function (response) {
        if (response.status === 403) {
          throw new Error("logged out or not allowed: reload the page to log in");
        }
        if (!response.ok) {
          throw new Error("HTTP " + response.status);
        }
        return response.json();
      })
      .then(function (data) {
        apply(data);
        fleet.refreshes += 1;
        fleet.lastUpdate = data.generated_at;
        fleet.lastError = null;
        report("Updated " + new Date().toLocaleTimeString() + ".", false);
      })
      .catch(function (error) {
        fleet.failures += 1;
        fleet.lastError = String(error.message || error);
        report("Not updated since " + (fleet.lastUpdate ? new Date(fleet.lastUpdate).toLocaleTimeString() : "the page loaded") +
          ": " + fleet.lastError + " (retrying).", true);
      })
      .then(function () {
        clearTimeout(abort);
        schedule();
      });
  }

  document.addEventListener("visibilitychange", function () {
    if (!document.hidden) {
      clearTimeout(timer);
      refresh();
    }
  });
  schedule();
})();
