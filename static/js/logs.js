// The live log panel: htmx's ws extension appends the pushed lines; this file follows the
// tail, pauses when the reader scrolls up, filters, caps the page's size and makes every
// (re)connection resume after the last line the page already has.
(function () {
  "use strict";
  if (window.convoyLogs) return;
  var MAX_LINES = 50000; // older lines leave the page (they stay in the raw log)
  var SOCKET_PATH = /\/ws\/sandboxes\/(\d+)\/logs\//;

  function panelFor(sandboxId) {
    return document.querySelector('[data-log-panel][data-sandbox="' + sandboxId + '"]');
  }

  function lastSeq(panel) {
    var lines = panel.querySelector(".log-lines");
    var last = lines && lines.lastElementChild;
    return last ? parseInt(last.getAttribute("data-seq"), 10) || 0 : 0;
  }

  // Every socket the ws extension opens (the first and each reconnection) asks for the lines
  // after the last one on the page, so a reconnect neither repeats nor skips a line.
  function installResume() {
    var create = htmx.createWebSocket;
    htmx.createWebSocket = function (url) {
      var match = SOCKET_PATH.exec(url);
      var panel = match && panelFor(match[1]);
      if (panel) {
        var u = new URL(url, window.location.href);
        u.searchParams.set("after", String(lastSeq(panel)));
        url = u.toString();
      }
      return create(url);
    };
  }

  function matches(line, needle) {
    return !needle || line.textContent.toLowerCase().indexOf(needle) >= 0;
  }

  function setup(panel) {
    if (panel.convoyLog) return;
    var view = panel.querySelector("[data-log-view]");
    var filter = panel.querySelector("[data-log-filter]");
    var follow = panel.querySelector("[data-log-follow]");
    var status = panel.querySelector("[data-log-status]");
    var lines = panel.querySelector(".log-lines");
    var state = { seen: lastSeq(panel), count: lines.childElementCount, needle: "" };
    panel.convoyLog = state;

    function atBottom() {
      return view.scrollHeight - view.scrollTop - view.clientHeight < 8;
    }
    function toBottom() {
      view.scrollTop = view.scrollHeight;
    }
    function setStatus(text, live) {
      status.textContent = text;
      status.classList.toggle("live", !!live);
    }

    view.addEventListener("scroll", function () {
      follow.checked = atBottom(); // scrolling up pauses; back at the end resumes
    });
    follow.addEventListener("change", function () {
      if (follow.checked) toBottom();
    });
    filter.addEventListener("input", function () {
      state.needle = filter.value.trim().toLowerCase();
      var lines = panel.querySelectorAll(".log-line");
      for (var i = 0; i < lines.length; i++) {
        lines[i].classList.toggle("log-hidden", !matches(lines[i], state.needle));
      }
      if (follow.checked) toBottom();
    });

    view.addEventListener("htmx:wsOpen", function () {
      setStatus("live", true);
    });
    view.addEventListener("htmx:wsClose", function (event) {
      var code = event.detail.event.code;
      if (code === 4401 || code === 4403) {
        setStatus("no access to this log");
        return;
      }
      setStatus("reconnecting…");
      // The extension retries abnormal closes itself; a server going away cleanly (a restart)
      // closes with another code, and we retry that too.
      if ([1006, 1011, 1012, 1013].indexOf(code) < 0 && document.body.contains(view)) {
        setTimeout(function () {
          event.detail.socketWrapper.reconnect();
        }, 1000 + Math.random() * 1000);
      }
    });
    view.addEventListener("htmx:wsAfterMessage", function (event) {
      var container = panel.querySelector(".log-lines");
      var added = Array.prototype.slice.call(container.children, state.count);
      for (var i = 0; i < added.length; i++) {
        var seq = parseInt(added[i].getAttribute("data-seq"), 10) || 0;
        if (seq <= state.seen) {
          added[i].remove(); // never expected: the server resumes after `after`
          continue;
        }
        state.seen = seq;
        if (state.needle && !matches(added[i], state.needle)) added[i].classList.add("log-hidden");
      }
      var extra = container.childElementCount - MAX_LINES;
      while (extra-- > 0) container.firstElementChild.remove();
      state.count = container.childElementCount;
      if (follow.checked) toBottom();
      // Tell the server what is shown, so it never has more than a window in flight to us.
      event.detail.socketWrapper.send(JSON.stringify({ ack: state.seen }));
    });
    if (follow.checked) toBottom();
  }

  function setupWithin(root) {
    if (!root.querySelectorAll) return;
    if (root.matches("[data-log-panel]")) setup(root);
    root.querySelectorAll("[data-log-panel]").forEach(setup);
  }

  window.convoyLogs = { lastSeq: lastSeq };
  installResume();
  setupWithin(document.body);
  // A panel swapped in later by htmx (htmx:load fires for each new element, log lines too,
  // so look only inside the new element).
  document.body.addEventListener("htmx:load", function (event) {
    setupWithin(event.target);
  });
})();
