// flask-polysms dashboard: progressive enhancement only; every page works without it.
(function () {
  "use strict";

  // Forms with data-confirm ask first (deleting a template).
  document.addEventListener("submit", function (event) {
    var message = event.target.getAttribute("data-confirm");
    if (message && !window.confirm(message)) {
      event.preventDefault();
    }
  });

  // Live template preview: post the body and sample values (with the form's CSRF token) and
  // show the server-rendered panel. The server counts encoding and segments, as a send would.
  function livePreview(form) {
    var url = form.getAttribute("data-preview-url");
    var panel = document.getElementById("preview");
    var timer = null;
    var sequence = 0;
    function refresh() {
      var mine = ++sequence;
      fetch(url, { method: "POST", body: new FormData(form), credentials: "same-origin" })
        .then(function (response) { return response.text(); })
        .then(function (html) {
          if (mine !== sequence) { return; } // an older answer arriving late
          var holder = document.createElement("div");
          holder.innerHTML = html;
          var fresh = holder.querySelector("#preview");
          if (fresh && panel) {
            panel.replaceWith(fresh);
            panel = fresh;
          }
        })
        .catch(function () { /* keep the last preview */ });
    }
    form.addEventListener("input", function (event) {
      if (!event.target.hasAttribute("data-preview-input")) { return; }
      window.clearTimeout(timer);
      timer = window.setTimeout(refresh, 200);
    });
  }

  document.addEventListener("DOMContentLoaded", function () {
    var form = document.getElementById("template-form");
    if (form && window.fetch) { livePreview(form); }
    // Keep the phone's newest message in view.
    var thread = document.getElementById("phone-thread");
    if (thread) { thread.scrollTop = thread.scrollHeight; }
  });
})();
