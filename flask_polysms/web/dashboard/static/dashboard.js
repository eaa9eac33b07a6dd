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


  // One conversation, live: poll its fragment (facts, handoff, messages) while the page is
  // visible, and send the operator's forms by fetch, showing the page the server answers with.
  // The server's ETag makes an unchanged poll a 304. Controls name the modes they are shown in
  // (data-modes); the fragment says the conversation's mode (data-mode). Polls stop while the
  // person is away (no key, pointer or scroll for data-pause-after-ms) and start again when
  // they are back: a poll is a request, and an open page must not keep a sign-in alive for ever.
  var POLL_MS = 1500;
  var PRESENCE_EVENTS = ["pointermove", "pointerdown", "keydown", "wheel", "touchstart"];

  function liveConversation(live) {
    var url = live.getAttribute("data-live-url");
    var status = document.getElementById("operator-status");
    var etag = null;
    var polling = true;
    var pauseAfter = Number(status.getAttribute("data-pause-after-ms")) || 0;
    var lastPresence = Date.now();
    var paused = false;
    var sequence = 0; // answers older than the newest shown are dropped

    function parse(html) {
      return new DOMParser().parseFromString(html, "text/html");
    }

    function show(fresh, mine) {
      if (!fresh || mine < sequence) { return; }
      sequence = mine;
      live.replaceWith(fresh);
      live = fresh;
      var mode = live.getAttribute("data-mode");
      document.querySelectorAll("[data-modes]").forEach(function (control) {
        control.hidden = control.getAttribute("data-modes").split(" ").indexOf(mode) < 0;
      });
    }

    function say(notes) {
      status.replaceChildren.apply(status, notes);
    }

    function note(text, className, id) {
      var element = document.createElement("p");
      element.className = "flash " + className;
      element.textContent = text;
      if (id) { element.id = id; }
      say([element]);
    }

    function stop(text) {
      polling = false;
      note(text, "flash-error");
    }

    function present() {
      lastPresence = Date.now();
      if (paused) {
        paused = false;
        say([]);
        poll();
      }
    }

    function away() {
      if (!pauseAfter || Date.now() - lastPresence < pauseAfter) { return false; }
      if (!paused) {
        paused = true;
        note("Updates are paused while you are away: move the pointer or press a key to resume.",
          "flash-paused", "updates-paused");
      }
      return true;
    }

    function poll() {
      if (!polling || document.visibilityState !== "visible" || away()) { return; }
      var mine = ++sequence;
      var headers = etag ? { "If-None-Match": etag } : {};
      fetch(url, { headers: headers, credentials: "same-origin" })
        .then(function (response) {
          if (response.status === 304) { return; }
          if (response.redirected || (response.status >= 400 && response.status < 500)) {
            stop("This page stopped updating (signed out, or the conversation is gone): reload it.");
            return;
          }
          if (!response.ok) { return; } // the server is busy or restarting: try again later
          etag = response.headers.get("ETag");
          return response.text().then(function (html) {
            show(parse(html).getElementById("conversation-live"), mine);
          });
        })
        .catch(function () { /* offline for a moment: the next poll tries again */ });
    }

    function send(form) {
      var button = form.querySelector("button[type=submit]");
      var mine = ++sequence;
      button.disabled = true;
      fetch(form.action, { method: "POST", body: new FormData(form), credentials: "same-origin" })
        .then(function (response) {
          return response.text().then(function (html) {
            var page = parse(html);
            var notes = Array.prototype.slice.call(page.querySelectorAll("main .flash"));
            var detail = page.getElementById("error-detail"); // the error page (CSRF, 404)
            if (detail) {
              detail.className = "flash flash-error";
              notes.push(detail);
            }
            var fresh = page.getElementById("conversation-live");
            if (!fresh && !detail) { // sent to the sign-in page
              stop("You are signed out: nothing was done. Reload the page to sign in.");
              return;
            }
            say(notes);
            show(fresh, mine);
            if (response.ok && !page.getElementById("operator-error") &&
                form.hasAttribute("data-clear-on-success")) {
              form.querySelectorAll("textarea, input[type=text]").forEach(function (field) {
                field.value = "";
              });
            }
          });
        })
        .catch(function () {
          note("The server could not be reached: reload the page to see whether it was done.",
            "flash-error");
        })
        .then(function () { button.disabled = false; });
    }

    document.addEventListener("submit", function (event) {
      var form = event.target;
      if (event.defaultPrevented || !form.hasAttribute("data-live-form")) { return; }
      event.preventDefault();
      send(form);
    });
    PRESENCE_EVENTS.forEach(function (name) {
      document.addEventListener(name, present, { passive: true });
    });
    document.addEventListener("visibilitychange", poll);
    window.setInterval(poll, POLL_MS);
  }

  document.addEventListener("DOMContentLoaded", function () {
    var form = document.getElementById("template-form");
    if (form && window.fetch) { livePreview(form); }
    // Keep the phone's newest message in view.
    var thread = document.getElementById("phone-thread");
    if (thread) { thread.scrollTop = thread.scrollHeight; }
    var live = document.getElementById("conversation-live");
    if (live && window.fetch && window.DOMParser) { liveConversation(live); }
  });
})();
