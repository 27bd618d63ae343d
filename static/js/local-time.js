// Times in the viewer's local time zone, durations in words: every <time data-local-time
// datetime="ISO"> gets its text in local time (the UTC text stays as its title), and every
// element with data-duration-ms="N" reads "1.2 s", "3 min 4 s" or "1 h 2 min". Runs on load
// and on every element htmx swaps in (the live partials of the sandbox and campaign pages).
(function () {
  "use strict";

  function duration(ms) {
    if (ms < 1000) return ms + " ms";
    var s = ms / 1000;
    if (s < 60) return s.toFixed(1) + " s";
    var m = Math.floor(s / 60);
    if (m < 60) return m + " min " + Math.round(s % 60) + " s";
    return Math.floor(m / 60) + " h " + (m % 60) + " min";
  }

  function localise(root) {
    root.querySelectorAll("time[data-local-time]").forEach(function (el) {
      var when = new Date(el.getAttribute("datetime"));
      if (isNaN(when.getTime())) return;
      if (!el.title) el.title = el.textContent.trim();
      el.textContent = when.toLocaleString(undefined, {
        year: "numeric", month: "short", day: "numeric",
        hour: "2-digit", minute: "2-digit", second: "2-digit",
      });
    });
    root.querySelectorAll("[data-duration-ms]").forEach(function (el) {
      var ms = parseInt(el.getAttribute("data-duration-ms"), 10);
      if (!isNaN(ms)) el.textContent = duration(ms);
    });
  }

  document.addEventListener("DOMContentLoaded", function () { localise(document); });
  document.addEventListener("htmx:load", function (event) { localise(event.target); });
  if (document.readyState !== "loading") localise(document);
})();
