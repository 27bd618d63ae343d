// Keyboard review: j/k move between runs, o/Enter open, p pick, a approve, r reject.
// Works on the review queue (rows marked data-review-row) and on a run's comparison page.
(function () {
  "use strict";

  function typing(event) {
    var el = event.target;
    return el && (el.isContentEditable || /^(INPUT|TEXTAREA|SELECT)$/.test(el.tagName));
  }

  function submit(form, key) {
    if (!form) return;
    if (key === "r") {
      var reason = window.prompt("Why is this change rejected?");
      if (!reason) return;
      form.querySelector("input[name=comment]").value = reason;
    }
    form.requestSubmit ? form.requestSubmit() : form.submit();
  }

  function queue(root) {
    var rows = Array.prototype.slice.call(root.querySelectorAll("[data-review-row]"));
    var stored = parseInt(sessionStorage.getItem("convoy-review-row") || "0", 10);
    var current = Math.min(isNaN(stored) ? 0 : stored, Math.max(rows.length - 1, 0));
    function mark() {
      rows.forEach(function (row, i) { row.classList.toggle("current", i === current); });
      if (rows[current]) rows[current].scrollIntoView({ block: "nearest" });
      sessionStorage.setItem("convoy-review-row", String(current));
    }
    mark();
    return function (key) {
      if (!rows.length) return false;
      if (key === "j") { current = Math.min(current + 1, rows.length - 1); mark(); return true; }
      if (key === "k") { current = Math.max(current - 1, 0); mark(); return true; }
      if (key === "o" || key === "Enter") { window.location = rows[current].dataset.openUrl; return true; }
      if (key === "p" || key === "a" || key === "r") {
        submit(rows[current].querySelector('form[data-key="' + key + '"]'), key);
        return true;
      }
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
      if (key === "p" || key === "a" || key === "r") {
        var target = root.querySelector('[data-key="' + key + '"]');
        if (!target) return false;
        if (target.tagName === "FORM") { submit(target, key); return true; }
        var comment = target.form.querySelector("input[data-comment]");
        if (key === "r" && comment && !comment.value) {
          var reason = window.prompt("Why is this change rejected?");
          if (!reason) return true;
          comment.value = reason;
        }
        target.click();
        return true;
      }
      return false;
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
    if (handler(event.key)) event.preventDefault();
  });
  document.addEventListener("DOMContentLoaded", bind);
  document.body && document.body.addEventListener("htmx:afterSwap", bind);
  if (document.readyState !== "loading") bind();
})();
