// The index page's filters (on the glance and the matrix) and the matrix's collapsible groups. The filter state
// lives in the address (#status=stale,wrong&device=cpu&from=1.15.5), so a filtered view can be shared; it works
// from a file:// URL and under any sub-path. Without JavaScript every row and column shows.
(function () {
  "use strict";
  var form = document.getElementById("filters");
  var table = document.getElementById("matrix");
  var overview = document.getElementById("overview");
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
  var search = document.getElementById("search");
  var texts = {};  // scenario -> its name, pattern, why and fix in lower case: what the search box looks in
  if (overview) {
    overview.querySelectorAll("tbody tr[data-scenario]").forEach(function (row) {
      texts[row.dataset.scenario] = row.dataset.text || row.dataset.scenario;
    });
  }
  if (search) document.getElementById("search-area").hidden = false;
  function currentState() {
    var state = {};
    if (search && search.value.trim()) state.q = search.value.trim();
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
    if (search) search.value = state.q || "";
  }
  function apply(state) {
    var statuses = state.status ? state.status.split(",") : null;
    var devices = state.device ? state.device.split(",") : null;
    var scenarios = state.scenario ? state.scenario.split(",") : null;
    function statusWanted(status) { return !statuses || statuses.indexOf(status) >= 0; }
    function deviceWanted(device) { return !devices || devices.indexOf(device) >= 0; }
    function inVersions(first, last) {
      return (!state.from || compareVersions(last, state.from) >= 0) && (!state.to || compareVersions(first, state.to) <= 0);
    }
    var words = (state.q || "").toLowerCase().split(/\s+/).filter(Boolean);
    function found(scenario) {  // every word of the search is in the scenario's name or notes
      var text = texts[scenario] || scenario;
      return words.every(function (word) { return text.indexOf(word) >= 0; });
    }
    function columnChosen(element) {
      return deviceWanted(element.dataset.device) &&
        (!scenarios || !element.dataset.scenario || scenarios.indexOf(element.dataset.scenario) >= 0) &&
        (!element.dataset.scenario || found(element.dataset.scenario));
    }
    // Rows: a version row shows when one of its cells matches; columns: a scenario column shows when one of the
    // rows shown has a matching cell in it. Matching cells stay bright, the others are dimmed.
    var rows = 0, folded = 0, matches = {}, matched = {};
    table.querySelectorAll("tbody tr[data-tf]").forEach(function (row) {
      var inRange = inVersions(row.dataset.tf, row.dataset.tf);
      var hits = [];
      row.querySelectorAll("td.cell").forEach(function (cell) {
        var wanted = columnChosen(cell) && statusWanted(cell.dataset.status) &&
          (state.changed !== "1" || cell.dataset.changed === "1");
        cell.classList.toggle("dimmed", !wanted);
        if (wanted) hits.push(cell.dataset.device + " " + cell.dataset.scenario);
      });
      var shown = inRange && hits.length > 0;
      var collapsed = row.classList.contains("collapsed");
      row.hidden = !shown || collapsed;
      if (shown) {
        hits.forEach(function (key) { matches[key] = true; matched[key.split(" ")[1]] = true; });
        if (collapsed) folded++; else rows++;
      }
    });
    table.querySelectorAll("[data-scenario]").forEach(function (element) {
      element.hidden = !matches[element.dataset.device + " " + element.dataset.scenario];
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
    table.querySelectorAll("tbody.group").forEach(function (group) {
      var body = document.getElementById("group-" + group.dataset.major);
      group.hidden = !body.querySelector("tr[data-tf]:not([hidden])") && !body.querySelector("tr.collapsed");
    });
    document.getElementById("matrix-empty").hidden = rows + folded > 0;
    document.getElementById("shown").textContent = rows + " version rows shown" +
      (folded ? " (" + folded + " more in collapsed groups)" : "");
    // The glance: the scenarios with a matching cell, their lines of the devices chosen; the ranges and marks that
    // match stay bright.
    if (!overview) return;
    overview.querySelectorAll("[data-device]").forEach(function (element) {
      element.hidden = !deviceWanted(element.dataset.device);
    });
    var scenariosShown = 0;
    overview.querySelectorAll("tbody tr[data-scenario]").forEach(function (row) {
      var shown = !!matched[row.dataset.scenario];
      row.hidden = !shown;
      if (shown) scenariosShown++;
      row.querySelectorAll(".range, .ahead").forEach(function (range) {
        range.classList.toggle("dimmed", !(inVersions(range.dataset.first, range.dataset.last) &&
          statusWanted(range.dataset.status)));
      });
      row.querySelectorAll("a.mark").forEach(function (mark) {
        mark.classList.toggle("dimmed", !(inVersions(mark.dataset.tf, mark.dataset.tf) &&
          statusWanted(mark.dataset.status)));
      });
    });
    document.getElementById("overview-empty").hidden = scenariosShown > 0;
    if (search) {
      document.getElementById("search-count").textContent = words.length ?
        scenariosShown + " scenario" + (scenariosShown === 1 ? "" : "s") + " match" : "";
    }
  }
  function linkBack(hash) {
    // Cell and scenario pages get the filter along (?back=...), so that "the matrix" link returns to it.
    document.querySelectorAll("a[data-href]").forEach(function (link) {
      var target = link.dataset.href;
      var parts = target.split("#");
      link.href = hash ? parts[0] + "?back=" + encodeURIComponent(hash) + (parts.length > 1 ? "#" + parts[1] : "") :
        target;
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
  if (search) search.addEventListener("input", update);
  document.querySelectorAll("button.reset").forEach(function (button) {
    button.addEventListener("click", function () {
      showState({});
      update();
    });
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
  // A cell's numbers open below it, or to its left or above it where they would leave the window.
  function placeTip(event) {
    var cell = event.target.closest && event.target.closest("td.cell");
    var tip = cell && cell.querySelector(".tip");
    if (!tip) return;
    tip.classList.remove("flip", "up");
    var box = tip.getBoundingClientRect();
    if (box.right > document.documentElement.clientWidth - 4) tip.classList.add("flip");
    if (box.bottom > window.innerHeight - 4 && cell.getBoundingClientRect().top > box.height) tip.classList.add("up");
  }
  table.addEventListener("mouseover", placeTip);
  table.addEventListener("focusin", placeTip);
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
