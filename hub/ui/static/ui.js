// The dashboard's only script: keep a page live without reloading it under the reader.
// Every few seconds (main's data-refresh) it fetches the same URL and swaps in the new
// <main>, unless the tab is hidden or focus is in the content. Without it, pages
// still work: they are complete HTML, and a reload shows the same.
(function () {
  "use strict";
  var main = document.getElementById("main");
  var seconds = main && Number(main.getAttribute("data-refresh"));
  if (!seconds) { return; }
  // Busy: the tab is hidden, text is selected, or focus is inside the content (a field
  // being filled, or a keyboard user's place on a link or button, which a swap would lose).
  function busy() {
    var active = document.activeElement;
    return document.hidden || (active && active !== main && main.contains(active))
      || (window.getSelection && String(window.getSelection()) !== "");
  }
  function refresh() {
    if (busy()) { return; }
    fetch(window.location.href, { credentials: "same-origin", headers: { "Accept": "text/html" } })
      .then(function (response) {
        if (!response.ok || response.redirected) { return null; }
        return response.text();
      })
      .then(function (html) {
        if (html === null || busy()) { return; }
        var fresh = new DOMParser().parseFromString(html, "text/html").getElementById("main");
        if (fresh) { main.innerHTML = fresh.innerHTML; }
      })
      .catch(function () { /* the hub is restarting or unreachable: try again next tick */ });
  }
  window.setInterval(refresh, seconds * 1000);
}());
