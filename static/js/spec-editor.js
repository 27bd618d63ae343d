// The campaign spec editor: a line-number gutter beside the textarea, kept in step with its
// lines and scroll, and the lines named by the live check's errors ("(line N)") marked.
// Checking itself is htmx's job (the textarea posts to campaign-validate as it is typed).
(function () {
  "use strict";

  function setUp(editor) {
    var text = editor.querySelector("textarea");
    var gutter = editor.querySelector("[data-spec-lines]");
    if (!text || !gutter) return;
    var shown = 0;
    var marked = [];

    function render() {
      var count = text.value.split("\n").length;
      if (count === shown && !render.dirty) return;
      shown = count;
      render.dirty = false;
      var parts = [];
      for (var i = 1; i <= count; i++) {
        parts.push(marked.indexOf(i) >= 0 ? "\u25B6" + i : String(i));
      }
      gutter.textContent = parts.join("\n");
      gutter.scrollTop = text.scrollTop;
    }

    text.addEventListener("input", render);
    text.addEventListener("scroll", function () { gutter.scrollTop = text.scrollTop; });
    document.body.addEventListener("htmx:afterSwap", function () {
      var errors = document.querySelectorAll("#spec-errors .field-error");
      marked = [];
      errors.forEach(function (li) {
        var match = /\(line (\d+)\)/.exec(li.textContent);
        if (match) marked.push(parseInt(match[1], 10));
      });
      render.dirty = true;
      render();
    });
    render();
  }

  function start() {
    document.querySelectorAll("[data-spec-editor]").forEach(setUp);
  }
  if (document.readyState === "loading") {
    document.addEventListener("DOMContentLoaded", start);
  } else {
    start();
  }
})();
