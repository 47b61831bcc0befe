// The matrix page's filters and collapsible groups. The filter state lives in the address
// (#status=stale,wrong&device=cpu&from=1.15.5), so a filtered view can be shared; it works
// from a file:// URL and under any sub-path. Without JavaScript every row and column shows.
(function () {
  "use strict";
  var form = document.getElementById("filters");
  var table = document.getElementById("matrix");
  if (!form || !table) return;
  form.hidden = false;

  function parseVersion(text) {
    return text.split(".").map(function (part) { return parseInt(part, 10) || 0; });
  }
  function compareVersions(a, b) {
    var x = parseVersion(a), y = parseVersion(b);
    for (var i = 0; i < Math.max(x.length, y.length); i++) {
      if ((x[i] || 0) !== (y[i] || 0)) return (x[i] || 0) - (y[i] || 0);
    }
    return 0;
  }
  function readState() {
    var state = {};
    location.hash.replace(/^#/, "").split("&").forEach(function (pair) {
      var parts = pair.split("=");
      if (parts[0]) state[decodeURIComponent(parts[0])] = decodeURIComponent(parts[1] || "");
    });
    return state;
  }
  function checked(name) {
    return Array.prototype.filter.call(form.querySelectorAll('input[name="' + name + '"]'), function (box) {
      return box.checked;
    }).map(function (box) { return box.value; });
  }
  function currentState() {
    var state = {};
    ["status", "device", "scenario"].forEach(function (name) {
      var values = checked(name);
      if (values.length) state[name] = values.join(",");
    });
    ["from", "to"].forEach(function (name) {
      var value = form.querySelector('select[name="' + name + '"]').value;
      if (value) state[name] = value;
    });
    if (checked("changed").length) state.changed = "1";
    return state;
  }
  function showState(state) {
    ["status", "device", "scenario"].forEach(function (name) {
      var wanted = (state[name] || "").split(",");
      form.querySelectorAll('input[name="' + name + '"]').forEach(function (box) {
        box.checked = wanted.indexOf(box.value) >= 0;
      });
    });
    ["from", "to"].forEach(function (name) {
      form.querySelector('select[name="' + name + '"]').value = state[name] || "";
    });
    form.querySelector('input[name="changed"]').checked = state.changed === "1";
  }
  function apply(state) {
    var statuses = state.status ? state.status.split(",") : null;
    var devices = state.device ? state.device.split(",") : null;
    var scenarios = state.scenario ? state.scenario.split(",") : null;
    function columnShown(element) {
      return (!devices || devices.indexOf(element.dataset.device) >= 0) &&
        (!scenarios || !element.dataset.scenario || scenarios.indexOf(element.dataset.scenario) >= 0);
    }
    table.querySelectorAll("[data-device]").forEach(function (element) {
      element.hidden = !columnShown(element);
    });
    var rows = 0;
    table.querySelectorAll("tbody tr[data-tf]").forEach(function (row) {
      var tf = row.dataset.tf;
      var inRange = (!state.from || compareVersions(tf, state.from) >= 0) &&
        (!state.to || compareVersions(tf, state.to) <= 0);
      var matching = 0;
      row.querySelectorAll("td.cell").forEach(function (cell) {
        var wanted = columnShown(cell) && (!statuses || statuses.indexOf(cell.dataset.status) >= 0) &&
          (state.changed !== "1" || cell.dataset.changed === "1");
        cell.classList.toggle("dimmed", !wanted);
        if (wanted) matching++;
      });
      var shown = inRange && matching > 0;
      row.hidden = !shown || row.classList.contains("collapsed");
      if (shown) rows++;
    });
    document.getElementById("shown").textContent = rows + " version rows shown";
  }
  function update() {
    var state = currentState();
    var hash = Object.keys(state).map(function (key) {
      return encodeURIComponent(key) + "=" + encodeURIComponent(state[key]).replace(/%2C/g, ",");
    }).join("&");
    history.replaceState(null, "", hash ? "#" + hash : location.pathname + location.search);
    apply(state);
  }
  form.addEventListener("change", update);
  document.getElementById("reset").addEventListener("click", function () {
    showState({});
    update();
  });
  window.addEventListener("hashchange", function () {
    showState(readState());
    apply(readState());
  });
  table.querySelectorAll("button.toggle").forEach(function (button) {
    button.addEventListener("click", function () {
      var open = button.getAttribute("aria-expanded") !== "true";
      button.setAttribute("aria-expanded", open ? "true" : "false");
      document.getElementById(button.getAttribute("aria-controls")).querySelectorAll("tr").forEach(function (row) {
        row.classList.toggle("collapsed", !open);
      });
      apply(readState());
    });
  });
  showState(readState());
  apply(readState());
})();
