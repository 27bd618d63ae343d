// Keyboard review. On the review queue (rows marked data-review-row): j/k move, o/Enter open.
// On a change's page (data-review-page="compare"), keys act on the change shown there only:
// j/k next/previous run, 1-9 show a variant, p pick it, a approve it (the button exists only
// once the diff is on the page), r type a rejection reason (Enter rejects), u undo the
// decision just made.
(function () {
  "use strict";

  function typing(event) {
    var el = event.target;
    return el && (el.isContentEditable || /^(INPUT|TEXTAREA|SELECT)$/.test(el.tagName));
  }

  function send(form) {
    if (!form) return false;
    if (form.requestSubmit) { form.requestSubmit(); } else { form.submit(); }
    return true;
  }

  function queue(root) {
    var rows = Array.prototype.slice.call(root.querySelectorAll("[data-review-row]"));
    var stored = parseInt(sessionStorage.getItem("convoy-review-row") || "0", 10);
    var current = Math.min(isNaN(stored) ? 0 : stored, Math.max(rows.length - 1, 0));
    function mark() {
      rows.forEach(function (row, i) {
        row.classList.toggle("current", i === current);
        if (i === current) { row.setAttribute("aria-current", "true"); } else { row.removeAttribute("aria-current"); }
      });
      if (rows[current]) rows[current].scrollIntoView({ block: "nearest" });
      sessionStorage.setItem("convoy-review-row", String(current));
    }
    mark();
    return function (key) {
      if (!rows.length) return false;
      if (key === "j") { current = Math.min(current + 1, rows.length - 1); mark(); return true; }
      if (key === "k") { current = Math.max(current - 1, 0); mark(); return true; }
      if (key === "o" || key === "Enter") { window.location = rows[current].dataset.openUrl; return true; }
      return false;
    };
  }

  function compare(root) {
    return function (key) {
      if (key === "j" && root.dataset.nextUrl) { window.location = root.dataset.nextUrl; return true; }
      if (key === "k" && root.dataset.prevUrl) { window.location = root.dataset.prevUrl; return true; }
      if (/^[1-9]$/.test(key)) {
        var card = root.querySelectorAll("[data-show-url]")[parseInt(key, 10) - 1];
        if (card) { window.location = card.dataset.showUrl; return true; }
        return false;
      }
      var target = root.querySelector('[data-key="' + key + '"]');
      if (!target) return false;
      if (key === "r") { target.focus(); return true; }
      if (target.tagName === "FORM") return send(target);
      target.click();
      return true;
    };
  }

  var handler = null;
  function bind() {
    var root = document.querySelector("[data-review-page]");
    if (!root) { handler = null; return; }
    handler = root.dataset.reviewPage === "queue" ? queue(root) : compare(root);
    document.documentElement.dataset.reviewKeys = "ready";
  }

  document.addEventListener("keydown", function (event) {
    if (!handler || typing(event) || event.ctrlKey || event.metaKey || event.altKey) return;
    if (document.querySelector("dialog[open]")) return;
    if (event.key === "u" && send(document.querySelector('form[data-key="u"]'))) {
      event.preventDefault();
      return;
    }
    if (handler(event.key)) event.preventDefault();
  });
  document.addEventListener("DOMContentLoaded", bind);
  document.body && document.body.addEventListener("htmx:afterSwap", bind);
  if (document.readyState !== "loading") bind();
})();
