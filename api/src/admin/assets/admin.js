// veza-jobs admin dashboard: confirmations before actions, and live refresh of the parts
// marked data-live (the same page with fragment=1, polled; no reload). No dependencies.
"use strict";

document.addEventListener("submit", function (event) {
  var message = event.target.getAttribute("data-confirm");
  if (message && !window.confirm(message)) {
    event.preventDefault();
  }
});

function live(el) {
  var url = el.getAttribute("data-live");
  var every = parseInt(el.getAttribute("data-every"), 10) || 3000;
  if (el.querySelector("[data-live-stop]")) {
    return;
  }
  function tick() {
    fetch(url, { credentials: "same-origin", headers: { "X-Requested-With": "fetch" } })
      .then(function (resp) {
        if (resp.status === 401) {
          window.location.reload();
          return null;
        }
        return resp.ok ? resp.text() : null;
      })
      .then(function (html) {
        if (html !== null && html !== undefined) {
          el.innerHTML = html;
        }
        if (!el.querySelector("[data-live-stop]")) {
          window.setTimeout(tick, every);
        }
      })
      .catch(function () {
        window.setTimeout(tick, every * 2);
      });
  }
  window.setTimeout(tick, every);
}

document.addEventListener("DOMContentLoaded", function () {
  document.querySelectorAll("[data-live]").forEach(live);
});
