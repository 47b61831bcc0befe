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
  function options(name) {
    return Array.prototype.map.call(form.querySelectorAll('select[name="' + name + '"] option'), function (option) {
      return option.value;
    });
  }
  function readState() {
    // Only what the form can show: a version the selects do not offer (#from=9.9.9) is ignored, not obeyed.
    var state = {};
    location.hash.replace(/^#/, "").split("&").forEach(function (pair) {
      var parts = pair.split("=");
      var key, value;
      try {
        key = decodeURIComponent(parts[0]);
        value = decodeURIComponent(parts[1] || "");
      } catch (error) {
        return;
      }
      if ((key === "from" || key === "to") && options(key).indexOf(value) < 0) return;
      if (key) state[key] = value;
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
      if (!element.classList.contains("device-head")) element.hidden = !columnShown(element);
    });
    // Each device's header spans its visible scenario columns; the group heads span every visible column.
    var visible = 0;
    table.querySelectorAll("th.device-head").forEach(function (head) {
      var count = table.querySelectorAll('th.scenario-name[data-device="' + head.dataset.device + '"]:not([hidden])').length;
      head.hidden = count === 0;
      if (count) head.colSpan = count;
      visible += count;
    });
    table.querySelectorAll("tr.group-head th").forEach(function (head) { head.colSpan = visible + 2; });
    var rows = 0, folded = 0;
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
      var collapsed = row.classList.contains("collapsed");
      row.hidden = !shown || collapsed;
      if (shown && !collapsed) rows++;
      if (shown && collapsed) folded++;
    });
    document.getElementById("shown").textContent = rows + " version rows shown" +
      (folded ? " (" + folded + " more in collapsed groups)" : "");
  }
  function linkBack(hash) {
    // Cell and scenario pages get the filter along (?back=...), so that "the matrix" link returns to it.
    document.querySelectorAll("a[data-href]").forEach(function (link) {
      var target = link.dataset.href;
      link.href = hash ? target.replace("#", "?back=" + encodeURIComponent(hash) + "#") : target;
    });
  }
  function hashOf(state) {
    return Object.keys(state).map(function (key) {
      return encodeURIComponent(key) + "=" + encodeURIComponent(state[key]).replace(/%2C/g, ",");
    }).join("&");
  }
  function update() {
    var state = currentState();
    var hash = hashOf(state);
    history.replaceState(null, "", hash ? "#" + hash : location.pathname + location.search);
    apply(state);
    linkBack(hash);
  }
  form.addEventListener("change", update);
  document.getElementById("reset").addEventListener("click", function () {
    showState({});
    update();
  });
  window.addEventListener("hashchange", function () {
    showState(readState());
    apply(readState());
    linkBack(hashOf(currentState()));
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
  // Touch screens have no hover: the first tap on a cell shows its numbers, the second opens it.
  if (window.matchMedia("(hover: none)").matches) {
    table.addEventListener("click", function (event) {
      var link = event.target.closest("td.cell > a");
      if (!link) return;
      var cell = link.parentNode;
      if (cell.classList.contains("tip-open")) return;
      event.preventDefault();
      table.querySelectorAll("td.tip-open").forEach(function (open) { open.classList.remove("tip-open"); });
      cell.classList.add("tip-open");
    });
  }
  showState(readState());
  apply(readState());
  linkBack(hashOf(currentState()));
})();
