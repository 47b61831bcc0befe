// runs.html: what changed between any two runs, from the statuses embedded in the page (text only:
// nothing from the data is ever parsed as HTML).
(function () {
  "use strict";
  var form = document.getElementById("compare");
  var data = document.getElementById("history-data");
  if (!form || !data) return;
  var history = JSON.parse(data.textContent);
  var words = {"updated": "✔ updated", "stale": "✘ stale", "wrong": "≠ wrong", "unsupported": "∅ unsupported",
               "error": "‼ error", "build-error": "⚠ build error", "not-run": "– not run"};
  form.hidden = false;

  function cell(row, text, status, href) {
    var td = document.createElement("td");
    if (href) {
      var link = document.createElement("a");
      link.href = href;
      link.textContent = text;
      td.appendChild(link);
    } else {
      td.textContent = text;
    }
    if (status) td.className = "s-" + status;
    row.appendChild(td);
  }
  var safeId = /^[A-Za-z0-9._-]+$/;
  function compare() {
    var a = history.statuses[form.elements.a.value] || {}, b = history.statuses[form.elements.b.value] || {};
    var body = document.querySelector("#compare-table tbody");
    body.textContent = "";
    var compared = 0, changed = 0;
    Object.keys(b).sort().forEach(function (cellId) {
      if (!a[cellId]) return;
      Object.keys(b[cellId]).forEach(function (scenario) {
        if (!(scenario in a[cellId])) return;
        compared += 1;
        var was = a[cellId][scenario], now = b[cellId][scenario];
        if (was === now) return;
        changed += 1;
        var row = document.createElement("tr");
        var page = safeId.test(cellId) && safeId.test(scenario) ? "cells/" + cellId + ".html#" + scenario : null;
        cell(row, cellId, null, page); cell(row, scenario); cell(row, words[was] || was, was); cell(row, words[now] || now, now);
        body.appendChild(row);
      });
    });
    document.getElementById("compare-summary").textContent =
      changed + " of " + compared + " verdicts differ between the cells both runs hold" +
      (compared ? "" : " (nothing compared: no cell ran in both)");
  }
  form.addEventListener("change", compare);
  compare();
})();
