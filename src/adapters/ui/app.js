// assayer support console: small enhancements only; every page works without script.
"use strict";
document.addEventListener("DOMContentLoaded", () => {
  // Scroll the fork row of an item's timeline into view.
  const fork = document.querySelector("#timeline tr.fork");
  if (fork) fork.scrollIntoView({ block: "center" });
  // "/" focuses the search box.
  const search = document.getElementById("search");
  document.addEventListener("keydown", (e) => {
    if (e.key === "/" && search && document.activeElement !== search) {
      e.preventDefault();
      search.focus();
    }
  });
});
