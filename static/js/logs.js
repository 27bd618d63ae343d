// The live log panel. htmx's ws extension keeps the socket (connects, reconnects); this file
// appends the pushed lines, follows the tail, pauses when the reader scrolls up, filters, caps
// the page's size, acknowledges what it shows and makes every (re)connection resume after the
// last line the page already has.
(function () {
  "use strict";
  if (window.convoyLogs) return;
  var MAX_LINES = 50000; // older lines leave the page (they stay in the raw log)
  var SOCKET_PATH = /\/ws\/sandboxes\/(\d+)\/logs\//;

  function panelFor(sandboxId) {
    return document.querySelector('[data-log-panel][data-sandbox="' + sandboxId + '"]');
  }

  function lastSeq(panel) {
    if (panel.convoyLog) return panel.convoyLog.seen;
    var lines = panel.querySelectorAll(".log-lines .log-line");
    var last = lines[lines.length - 1];
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
    var state = { seen: lastSeq(panel), needle: "", shown: panel.querySelectorAll(".log-line").length };
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
    // The panel appends pushed lines itself rather than through htmx's out-of-band swap, which
    // would process every line as htmx content and lay the page out once per message.
    var parser = document.createElement("template");
    view.addEventListener("htmx:wsBeforeMessage", function (event) {
      event.preventDefault();
      parser.innerHTML = event.detail.message;
      var wrapper = parser.content.firstElementChild;
      var container = panel.querySelector(".log-lines");
      if (!wrapper || !container) return;
      var fresh = document.createDocumentFragment();
      var line = wrapper.firstElementChild;
      while (line) {
        var next = line.nextElementSibling;
        var seq = parseInt(line.getAttribute("data-seq"), 10) || 0;
        if (seq > state.seen) {
          // The server resumes after `after`, so this check never drops anything in practice.
          state.seen = seq;
          if (state.needle && !matches(line, state.needle)) line.classList.add("log-hidden");
          fresh.appendChild(line);
        }
        line = next;
      }
      // Each message's lines go into one block that the browser may skip laying out while it
      // is off screen (CSS content-visibility): tens of thousands of lines stay cheap.
      var chunk = document.createElement("div");
      chunk.className = "log-chunk";
      chunk.appendChild(fresh);
      pending.push(chunk);
      socket = event.detail.socketWrapper;
      if (!scheduled) {
        scheduled = true;
        requestAnimationFrame(flush);
      }
    });

    // The DOM is touched once per frame however many messages came in; a hidden tab does not
    // draw frames, stops acknowledging, and the server stops sending until it is back.
    var pending = [];
    var scheduled = false;
    var socket = null;
    function flush() {
      scheduled = false;
      var container = panel.querySelector(".log-lines");
      for (var i = 0; i < pending.length; i++) {
        state.shown += pending[i].childElementCount;
        container.appendChild(pending[i]);
      }
      pending = [];
      var last = container.lastElementChild;
      while (state.shown > MAX_LINES && container.firstElementChild !== last) {
        var first = container.firstElementChild;
        state.shown -= first.classList.contains("log-chunk") ? first.childElementCount : 1;
        first.remove();
      }
      if (follow.checked) toBottom();
      // Tell the server what is shown, so it never has more than a window in flight to us.
      if (socket) socket.send(JSON.stringify({ ack: state.seen }));
    }
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
