// Site-wide behaviour (no inline scripts: the pages' CSP forbids them).
// 1. Confirmations: a form with data-confirm="text" (and "{count}" filled with the number of
//    checked inputs named by data-confirm-count), or an htmx element with hx-confirm, asks in
//    the page's <dialog id="confirm-dialog"> before it is sent.
// 2. The navigation collapses behind a Menu button on narrow screens.
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

  if (document.readyState === "loading") {
    document.addEventListener("DOMContentLoaded", navToggle);
  } else {
    navToggle();
  }
})();
