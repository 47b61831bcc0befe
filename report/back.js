// Cell and scenario pages: "the matrix" link returns to the matrix as it was filtered. The matrix passes its
// filter as ?back=<its address fragment>; it only ever becomes the fragment of a link to index.html.
(function () {
  "use strict";
  var back = new URLSearchParams(location.search).get("back");
  if (!back) return;
  document.querySelectorAll("a.back").forEach(function (link) {
    link.href = link.getAttribute("href").split("#")[0] + "#" + back;
  });
})();
