// Site-wide behaviour (no inline scripts: the pages' CSP forbids them).
// 1. Confirmations: a form with data-confirm="text" (and "{count}" filled with the number of
//    checked inputs named by data-confirm-count), or an htmx element with hx-confirm, asks in
//    the page's <dialog id="confirm-dialog"> before it is sent.
// 2. The navigation collapses behind a Menu button on narrow screens.
// 4. Tables scroll in their own box: every table in <main> sits in a .table-scroll box, and a
//    box that overflows is focusable (tabindex=0) and named, so keyboard users can scroll it.
// 3. htmx swaps refusals (4xx) too: the server answers them with a fragment meant to be shown
//    (a form row with its error, or the error notice retargeted into #notices), so the page
//    the user is on stays and says what was refused.
(function () {
  "use strict";

  function ask(text, action, proceed) {
    var dialog = document.getElementById("confirm-dialog");
    if (!dialog || typeof dialog.showModal !== "function") {
      if (window.confirm(text)) proceed();
      return;
    }
    dialog.querySelector("[data-confirm-text]").textContent = text;
    dialog.querySelector("[data-confirm-ok]").textContent = action || "Confirm";
    dialog.returnValue = "";
    dialog.addEventListener("close", function done() {
      dialog.removeEventListener("close", done);
      if (dialog.returnValue === "ok") proceed();
    });
    dialog.showModal();
    dialog.querySelector("[data-confirm-cancel]").focus();
  }

  function confirmText(form) {
    var text = form.dataset.confirm;
    if (form.dataset.confirmCount) {
      var boxes = form.querySelectorAll('input[name="' + form.dataset.confirmCount + '"]:checked');
      text = text.replace("{count}", String(boxes.length));
    }
    return text;
  }

  document.addEventListener("submit", function (event) {
    var form = event.target;
    if (!form.dataset || !form.dataset.confirm) return;
    if (form.dataset.confirmed === "1") { delete form.dataset.confirmed; return; }
    event.preventDefault();
    var submitter = event.submitter || null;
    ask(confirmText(form), form.dataset.confirmAction, function () {
      form.dataset.confirmed = "1";
      if (form.requestSubmit) { form.requestSubmit(submitter); } else { form.submit(); }
    });
  }, true);

  document.addEventListener("htmx:confirm", function (event) {
    if (!event.detail || !event.detail.question) return;
    event.preventDefault();
    var el = event.detail.elt;
    ask(event.detail.question, el && el.dataset.confirmAction, function () {
      event.detail.issueRequest(true);
    });
  });

  document.addEventListener("htmx:beforeSwap", function (event) {
    var status = event.detail.xhr ? event.detail.xhr.status : 0;
    if (status >= 400 && status < 500) {
      event.detail.shouldSwap = true;
      event.detail.isError = false;
    }
  });

  function navToggle() {
    var button = document.querySelector("[data-nav-toggle]");
    if (!button) return;
    var bar = button.closest(".topbar");
    button.addEventListener("click", function () {
      var open = bar.classList.toggle("nav-open");
      button.setAttribute("aria-expanded", open ? "true" : "false");
    });
  }

  function tableName(table) {
    var caption = table.querySelector("caption");
    if (caption && caption.textContent.trim()) return caption.textContent.trim();
    if (table.dataset.label) return table.dataset.label;
    var el = table.closest(".table-scroll") || table;
    while (el && el !== document.body) {
      var prev = el.previousElementSibling;
      while (prev) {
        if (/^H[1-6]$/.test(prev.tagName)) return prev.textContent.trim();
        prev = prev.previousElementSibling;
      }
      el = el.parentElement;
    }
    return "Table";
  }

  function tablesBoxed(root) {
    var main = document.getElementById("main");
    if (!main) return;
    (root && root.querySelectorAll ? root : main).querySelectorAll("table").forEach(function (table) {
      if (!main.contains(table) || table.parentElement.classList.contains("table-scroll")) return;
      var box = document.createElement("div");
      box.className = "table-scroll";
      box.dataset.boxed = "js";
      table.parentNode.insertBefore(box, table);
      box.appendChild(table);
    });
    main.querySelectorAll(".table-scroll").forEach(function (box) {
      var table = box.querySelector("table");
      if (box.scrollWidth > box.clientWidth + 1) {
        box.setAttribute("tabindex", "0");
        box.setAttribute("role", "region");
        if (!box.hasAttribute("aria-label") && table) box.setAttribute("aria-label", tableName(table));
      } else if (box.dataset.boxed === "js" || !box.hasAttribute("aria-label")) {
        box.removeAttribute("tabindex");
      }
    });
    // Browser tests wait for this before checking the page at a new width.
    document.documentElement.dataset.tablesWidth = String(window.innerWidth);
  }

  function ready() {
    navToggle();
    tablesBoxed();
  }

  window.addEventListener("resize", function () { tablesBoxed(); });
  document.addEventListener("htmx:afterSettle", function () { tablesBoxed(); });

  if (document.readyState === "loading") {
    document.addEventListener("DOMContentLoaded", ready);
  } else {
    ready();
  }
})();
