"""The report in a real browser (Playwright driving Debian's Chromium), on the site generated from
a real run of the default matrix (tests/data/run: TF 1.7 to 2.21, CPU and GPU columns, all four
scenarios). The screenshots in docs/ are made here."""

from __future__ import annotations

import functools
import http.server
import importlib.util
import io
import json
import os
import re
import shutil
import threading
import unicodedata
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from bnmatrix.report import write_report
from tests.conftest import add_candidate, copy_run_started, require
from tests.e2e.conftest import REPO

pytestmark = pytest.mark.e2e
REAL_RUN = REPO / "tests" / "data" / "run"
# Debian's Chromium by default; BNMATRIX_CHROMIUM=playwright takes the browser `playwright install` fetched
# (as on GitHub's runners, where Chromium is a snap).
CHROMIUM = os.environ.get("BNMATRIX_CHROMIUM", "/usr/bin/chromium")
# This machine's network is closed: Chromium must not try to phone home.
CHROMIUM_ARGS = ["--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run", "--disable-background-networking",
                 "--disable-component-update", "--disable-sync"]
EVIL = '<script>window.pwned = 1</script>"><img src=x onerror="window.pwned = 2">'


@pytest.fixture(scope="module")
def site(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("site") / "public"
    write_report(REAL_RUN, out)
    return out


@pytest.fixture(scope="module")
def exported(site: Path) -> dict[str, Any]:
    return json.loads((site / "results.json").read_text())  # type: ignore[no-any-return]


@pytest.fixture(scope="module")
def browser() -> Iterator[Any]:
    bundled = CHROMIUM == "playwright"
    require(bundled or Path(CHROMIUM).exists(), f"no Chromium at {CHROMIUM} (apt-get install chromium)")
    from playwright.sync_api import sync_playwright

    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=None if bundled else CHROMIUM, args=CHROMIUM_ARGS)
        yield browser
        browser.close()


@pytest.fixture
def page(browser: Any) -> Iterator[Any]:
    """A page that records every request and fails on any script error or dialog."""
    context = browser.new_context(viewport={"width": 1500, "height": 1000})
    page = context.new_page()
    page.requests = []
    page.errors = []
    page.on("request", lambda request: page.requests.append(request.url))
    page.on("pageerror", lambda error: page.errors.append(str(error)))
    page.on("dialog", lambda dialog: page.errors.append(f"dialog: {dialog.message}"))
    yield page
    assert page.errors == []
    context.close()


def visible_rows(page: Any) -> list[str]:
    return page.eval_on_selector_all("#matrix tbody tr[data-tf]",
                                     "rows => rows.filter(r => !r.hidden && r.offsetParent !== null)"
                                     ".map(r => r.dataset.tf + (r.dataset.variant ? ' ' + r.dataset.variant : ''))")


def test_the_real_run_has_both_major_versions_both_devices_and_all_scenarios(exported: dict[str, Any]) -> None:
    versions = {cell["tf"] for cell in exported["cells"]}
    assert len(versions) >= 10
    assert any(v.startswith("1.") for v in versions) and any(v.startswith("2.") for v in versions)
    assert {cell["device"] for cell in exported["cells"]} == {"cpu", "gpu"}
    from bnmatrix.config import Matrix

    assert exported["scenarios"] == list(Matrix.from_file(REPO / "matrix.yaml").scenarios)  # all 36


def test_the_table_shows_what_the_results_say(page: Any, site: Path, exported: dict[str, Any]) -> None:
    page.goto((site / "index.html").as_uri())
    shown = page.eval_on_selector_all(
        "#matrix td.cell:not(.absent)",
        "cells => cells.map(c => [c.querySelector('a').getAttribute('href'), c.dataset.status, c.innerText])")
    by_href = {href: (status, text) for href, status, text in shown}
    words = {"updated": "updated", "stale": "stale", "wrong": "wrong", "unsupported": "unsupported",
             "error": "error", "build-error": "build error", "not-run": "not run"}
    count = 0
    note = page.locator("section[aria-labelledby=matrix-title] > p").first.inner_text()
    for cell in exported["cells"]:
        if cell["device"] == "gpu":  # no GPU cell ran here: the column is folded into a line that says so
            assert cell["status"] == "not-run" and "GPU: all 45 cells not run on this host" in note
            continue
        for name, result in cell["scenarios"].items():
            status, text = by_href[f"{cell['page']}#{name}"]
            assert status == result["status"]
            assert words[status] in text  # the word, not the colour alone
            count += 1
    assert count == len(shown)
    assert all(request.startswith("file://") for request in page.requests)  # nothing from the network


def test_filters_live_in_the_url_and_survive_a_reload(page: Any, site: Path, exported: dict[str, Any]) -> None:
    page.goto((site / "index.html").as_uri())
    everything = visible_rows(page)
    page.check('input[name="status"][value="stale"]')
    assert page.url.endswith("#status=stale")
    stale_rows = {cell["tf"] for cell in exported["cells"]
                  if any(s["status"] == "stale" for s in cell["scenarios"].values())}
    assert {row.split()[0] for row in visible_rows(page)} == stale_rows
    page.check('input[name="device"][value="cpu"]')
    page.select_option('select[name="from"]', "1.13.2")
    assert page.url.endswith("#status=stale&device=cpu&from=1.13.2")
    filtered = visible_rows(page)
    assert filtered and all(tuple(map(int, row.split()[0].split("."))) >= (1, 13, 2) for row in filtered)
    assert page.locator('th[data-device="gpu"]').first.is_hidden()
    page.reload()
    assert visible_rows(page) == filtered
    assert page.is_checked('input[name="status"][value="stale"]')
    assert page.is_checked('input[name="device"][value="cpu"]')
    page.click("#reset")
    assert visible_rows(page) == everything and "#" not in page.url


def test_version_groups_collapse(page: Any, site: Path) -> None:
    page.goto((site / "index.html").as_uri())
    button = page.locator('button.toggle[aria-controls="group-1.x"]')
    button.click()
    assert button.get_attribute("aria-expanded") == "false"
    assert not any(row.startswith("1.") for row in visible_rows(page))
    button.press("Enter")  # keyboard works as well as the mouse
    assert any(row.startswith("1.") for row in visible_rows(page))


def test_numbers_show_on_hover_and_on_keyboard_focus(page: Any, site: Path) -> None:
    page.goto((site / "index.html").as_uri())
    cell = page.locator("td.cell.s-wrong").first
    tip = cell.locator(".tip")
    assert tip.is_hidden()
    cell.hover()
    assert tip.is_visible() and "effective updates" in tip.inner_text()
    page.mouse.move(0, 0)
    stale = page.locator("td.cell.s-stale").first
    stale.locator("a").focus()
    assert stale.locator(".tip").is_visible()
    assert "moving mean 0 (expected 0.950951)" in stale.locator(".tip").inner_text()


def test_cell_and_scenario_pages_open_from_the_matrix(page: Any, site: Path) -> None:
    page.goto((site / "index.html").as_uri())
    page.locator('td.cell.s-stale[data-scenario="keras_bn_custom_estimator"] a').first.click()
    assert "/cells/tf-" in page.url and page.url.endswith("#keras_bn_custom_estimator")
    assert page.locator("h1").inner_text().startswith("tf-")
    section = page.locator("section#keras_bn_custom_estimator")
    assert "stale" in section.locator("h2").inner_text()
    assert section.locator("svg.chart").count() == 1
    assert "--steps 100" in section.locator("pre.command").inner_text()
    page.locator("section#keras_bn_custom_estimator h2 a").click()
    assert page.url.endswith("/scenarios/keras_bn_custom_estimator.html")
    assert page.locator("div.highlight").count() == 1 and "UPDATE_OPS" in page.locator("div.highlight").inner_text()
    assert page.locator('a[href="https://github.com/tensorflow/tensorflow/issues/16102"]').count() == 1


def test_a_hostile_log_and_error_render_inert(page: Any, tmp_path: Path) -> None:
    run = tmp_path / "run"
    shutil.copytree(REAL_RUN, run)
    path = sorted((run / "cells").glob("tf-1.15.5-cpu.json"))[0]
    result = json.loads(path.read_text())
    scenario = result["scenarios"]["layers_bn_session"]
    scenario.update(reason=EVIL, log_tail=EVIL, error={"type": "X", "message": EVIL, "traceback": EVIL})
    path.write_text(json.dumps(result))
    (run / "logs" / "tf-1.15.5-cpu" / "layers_bn_session.log").write_text(EVIL)
    out = tmp_path / "site"
    write_report(run, out)
    for target in ("index.html", "cells/tf-1.15.5-cpu.html", "cells/logs/tf-1.15.5-cpu/layers_bn_session.log"):
        page.goto((out / target).as_uri())
        page.hover("body")
        assert page.evaluate("window.pwned") is None
        assert page.locator("img[src=x]").count() == 0
    page.goto((out / "cells/tf-1.15.5-cpu.html").as_uri())
    assert EVIL in page.locator("section#layers_bn_session").inner_text()  # shown as text


@pytest.fixture
def served(site: Path, tmp_path: Path) -> Iterator[str]:
    """The site under a sub-path, as GitHub Pages serves a project site: /bnmatrix/."""
    (tmp_path / "www").mkdir()
    shutil.copytree(site, tmp_path / "www" / "bnmatrix")
    handler = functools.partial(http.server.SimpleHTTPRequestHandler, directory=str(tmp_path / "www"))
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_address[1]}/bnmatrix/"
    server.shutdown()
    server.server_close()


def test_works_under_a_sub_path(page: Any, served: str) -> None:
    failed: list[str] = []
    page.on("response", lambda response: failed.append(response.url) if response.status >= 400 else None)
    page.goto(served + "index.html")
    page.locator("td.cell.s-updated a").first.click()
    page.locator("a", has_text="the matrix").click()
    assert page.url.startswith(served)
    assert failed == []
    assert all(request.startswith(served) for request in page.requests)


def contrast(page: Any, selector: str) -> float:
    """The WCAG contrast ratio of an element's text against its background."""
    return page.eval_on_selector(selector, """element => {
        const rgb = text => text.match(/[\\d.]+/g).slice(0, 3).map(Number);
        const lum = ([r, g, b]) => {
            const f = c => { c /= 255; return c <= 0.03928 ? c / 12.92 : ((c + 0.055) / 1.055) ** 2.4; };
            return 0.2126 * f(r) + 0.7152 * f(g) + 0.0722 * f(b);
        };
        let node = element, background = 'rgba(0, 0, 0, 0)';
        while (node && (background === 'rgba(0, 0, 0, 0)' || background === 'transparent')) {
            background = getComputedStyle(node).backgroundColor; node = node.parentElement;
        }
        const a = lum(rgb(getComputedStyle(element).color)), b = lum(rgb(background));
        return (Math.max(a, b) + 0.05) / (Math.min(a, b) + 0.05);
    }""")


@pytest.mark.parametrize("scheme", ["light", "dark"])
def test_readable_contrast_in_light_and_dark(browser: Any, site: Path, scheme: str) -> None:
    context = browser.new_context(color_scheme=scheme)
    page = context.new_page()
    page.goto((site / "index.html").as_uri())
    background = page.evaluate("getComputedStyle(document.body).backgroundColor")
    assert (background == "rgb(255, 255, 255)") == (scheme == "light")
    for status in ("updated", "stale", "wrong", "unsupported", "not-run"):
        selector = f"td.cell.s-{status} a"
        if page.locator(selector).count():
            assert contrast(page, selector) >= 4.5, (scheme, status)
    assert contrast(page, "main p.lead") >= 4.5
    context.close()


def test_screenshots_for_the_readme(browser: Any, tmp_path: Path) -> None:
    """docs/report-*.png, from the real run and its real bisect (tests/data), at 1440x900."""
    site = tmp_path / "site"
    write_report(REPO / "tests" / "data", site)
    context = browser.new_context(viewport={"width": 1440, "height": 900})
    page = context.new_page()
    docs = REPO / "docs"
    docs.mkdir(exist_ok=True)
    page.goto((site / "index.html").as_uri())
    page.screenshot(path=str(docs / "report-overview.png"))
    page.goto((site / "index.html").as_uri() + "#to=2.16.2")
    page.evaluate("document.getElementById('matrix-title').scrollIntoView()")
    page.screenshot(path=str(docs / "report-matrix.png"))
    page.goto((site / "cells" / "tf-1.15.5-cpu.html").as_uri() + "#keras_bn_custom_estimator")
    page.screenshot(path=str(docs / "report-cell.png"))
    page.goto((site / "changes.html").as_uri() + "#keras_bn_sync_mirrored-cpu-2.1.4-2.2.3")
    page.screenshot(path=str(docs / "report-changes.png"))
    page.goto((site / "versions" / "2.15.1.html").as_uri())
    page.screenshot(path=str(docs / "report-version.png"))
    context.close()
    context = browser.new_context(viewport={"width": 1440, "height": 900}, color_scheme="dark")
    page = context.new_page()
    page.goto((site / "scenarios" / "keras_bn_custom_estimator.html").as_uri())
    page.evaluate("document.querySelector('ul.decides').scrollIntoView()")
    page.screenshot(path=str(docs / "report-scenario-dark.png"))
    context.close()
    context = browser.new_context(viewport={"width": 390, "height": 844}, has_touch=True, is_mobile=True)
    page = context.new_page()
    page.goto((site / "index.html").as_uri())
    page.evaluate("document.getElementById('overview-title').scrollIntoView()")
    page.screenshot(path=str(docs / "report-phone.png"))
    context.close()
    for name in ("overview", "matrix", "cell", "changes", "version", "scenario-dark", "phone"):
        assert (docs / f"report-{name}.png").stat().st_size > 10_000


def test_the_runs_page_compares_any_two_runs_and_shows_hostile_data_as_text(page: Any, tmp_path: Path) -> None:
    root = tmp_path / "results"
    copy_run_started(REAL_RUN, root / "run", "2026-11-27T14:32:12+00:00")  # before `later`
    shutil.copytree(REPO / "tests" / "data" / "bisect", root / "bisect")
    later = root / "later"
    (later / "cells").mkdir(parents=True)
    cell = json.loads((REAL_RUN / "cells" / "tf-1.9.0-cpu.json").read_text())
    cell["run_id"], cell["started"] = "later", "2026-11-28T00:00:00+00:00"
    updated = json.loads((REAL_RUN / "cells" / "tf-1.8.0-cpu.json").read_text())["scenarios"][
        "keras_bn_custom_estimator"]  # the numbers of a run where the statistics updated
    cell["scenarios"]["keras_bn_custom_estimator"] = {**updated, "tf_version": "1.9.0", "reason": EVIL,
                                                      "log": "logs/tf-1.9.0-cpu/keras_bn_custom_estimator.log"}
    (later / "cells" / "tf-1.9.0-cpu.json").write_text(json.dumps(cell))
    manifest = json.loads((REAL_RUN / "manifest.json").read_text())
    (later / "manifest.json").write_text(json.dumps({**manifest, "run_id": "later", "cells": ["tf-1.9.0-cpu"],
                                                     "backend": EVIL, "started": "2026-11-28T00:00:00+00:00"}))
    out = tmp_path / "site"
    write_report(root, out)
    page.goto((out / "runs.html").as_uri())
    assert page.text_content("#compare-summary") == "1 of 36 verdicts differ between the cells both runs hold"
    rows = page.eval_on_selector_all("#compare-table tbody tr", "rows => rows.map(r => r.innerText)")
    assert rows == ["tf-1.9.0-cpu\tkeras_bn_custom_estimator\t✘ stale\t✔ updated"]
    page.select_option("select[name=a]", index=0)  # the same run on both sides
    assert page.text_content("#compare-summary") == "0 of 36 verdicts differ between the cells both runs hold"
    assert page.evaluate("window.pwned") is None and page.locator("img[src=x]").count() == 0
    page.goto((out / "cells" / "tf-1.9.0-cpu.html").as_uri())  # the history strip: both runs, as text
    strip = page.eval_on_selector_all("table.strip tbody tr", "rows => rows.map(r => Array.from(r.cells, "
                                      "c => c.textContent.trim().replace(/\\s+/g, ' ')))")
    assert ["keras_bn_custom_estimator", "✘ stale", "✔ updated"] in strip
    assert page.evaluate("window.pwned") is None
    page.goto((out / "index.html").as_uri())  # a change pinned by the real bisect, followed to its evidence
    boundary = page.locator("tr[data-tf='1.10.1']:not([data-variant='tfkeras']) "
                            "td.cell[data-scenario='keras_bn_model_to_estimator']")
    assert "changes-here" in boundary.get_attribute("class")
    older = page.locator("tr[data-tf='1.9.0'] td.cell[data-scenario='keras_bn_model_to_estimator']")
    assert "boundary" in older.get_attribute("class")  # the line between 1.9.0 and 1.10.1
    boundary.hover()
    boundary.get_by_role("link", name="keras_bn_model_to_estimator (cpu): stale → updated in 1.10.0 (rows 1.9.0 → "
                         "1.10.1)").click()
    section = page.locator("section#keras_bn_model_to_estimator-cpu-1\\.9\\.0-1\\.10\\.1")
    assert "1.10.0" in section.inner_text() and section.is_visible()
    section.get_by_role("link", name="tf-1.10.0-cpu").click()
    assert page.url.endswith("cells/tf-1.10.0-cpu.html#keras_bn_model_to_estimator")
    assert "updated" in page.locator("section#keras_bn_model_to_estimator h2").inner_text()


def test_the_overview_answers_every_scenario_without_scrolling_sideways(page: Any, tmp_path: Path) -> None:
    """The real run and its real bisect: 36 scenarios, their version ranges starting at the pinned releases, as wide
    as a 1440 px screen (a range wraps between words, never inside its versions)."""
    out = tmp_path / "site"
    write_report(REPO / "tests" / "data", out)
    page.set_viewport_size({"width": 1440, "height": 900})
    page.goto((out / "index.html").as_uri())
    box = page.locator("#overview").bounding_box()
    assert box["x"] + box["width"] <= 1440, box
    versions = page.eval_on_selector_all("#overview .versions", "vs => vs.map(v => new Set([...v.getClientRects()]"
                                         ".filter(r => r.width > 1).map(r => Math.round(r.top))).size)")
    assert versions and set(versions) == {1}  # each range's versions on one line
    rows = page.eval_on_selector_all("#overview tbody tr", "rows => rows.map(r => r.innerText.replace(/\\s+/g, ' '))")
    assert len(rows) == 36
    row = next(r for r in rows if r.startswith("keras_bn_model_to_estimator "))
    assert ("✘ stale 1.7.1–1.9.0 · ✔ updated 1.10.0–1.10.1✓ (pinned by bisect) · ‼ error after 1.10.1, by 1.11.0 · "
            "✔ updated after 1.11.0, by 1.12.3, through 2.15.1 · ∅ unsupported from 2.16.1✓ (pinned by bisect)") in row
    assert "≠ wrong (2.00×) 1.7.1–2.15.1" in next(r for r in rows if r.startswith("layers_bn_session "))
    assert "GPU: none of its 31 versions ran on this host (not run)." in page.locator("section.overview").inner_text()
    marks = page.locator("#overview tbody tr").first.locator("td.marks").first.locator("a.mark")  # CPU: 31 versions
    assert marks.count() == 31 and marks.first.get_attribute("title") == "1.7.1: updated"


@pytest.fixture(scope="module")
def data_site(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The site of tests/data as a results root: the real run, and the real bisect of its change points."""
    out = tmp_path_factory.mktemp("data-site") / "public"
    write_report(REPO / "tests" / "data", out)
    return out


def test_a_scenario_filter_keeps_the_header_spans_and_counts_collapsed_rows(page: Any, data_site: Path) -> None:
    page.goto((data_site / "index.html").as_uri() + "#scenario=keras_fit,layers_bn_session")
    assert page.eval_on_selector('th.device-head[data-device="cpu"]', "h => h.colSpan") == 2
    assert page.eval_on_selector("tr.group-head th", "h => h.colSpan") == 4  # TF, Python and the two columns
    header = page.eval_on_selector_all("#matrix thead tr:nth-child(2) th:not([hidden])",
                                       "hs => hs.map(h => h.innerText)")
    assert [h.replace("\n", "") for h in header] == ["layers_bn_session", "keras_fit"]
    assert page.text_content("#shown") == "45 version rows shown"  # 37, 6 on JAX, 2 of today
    page.locator('button.toggle[aria-controls="group-2.x"]').click()
    twos = page.locator("#group-2\\.x tr[data-tf]").count()
    assert page.text_content("#shown") == f"{45 - twos} version rows shown ({twos} more in collapsed groups)"


def test_an_unknown_version_in_the_address_is_ignored(page: Any, data_site: Path) -> None:
    page.goto((data_site / "index.html").as_uri() + "#from=9.9.9&to=1.15.5")
    assert page.eval_on_selector('select[name="from"]', "s => s.value") == ""  # "oldest", and obeyed as such
    assert page.eval_on_selector('select[name="to"]', "s => s.value") == "1.15.5"
    rows = visible_rows(page)
    assert rows and rows[-1] == "1.7.1" and rows[0] == "1.15.5"


def test_the_matrix_link_on_a_cell_page_returns_to_the_filter(page: Any, data_site: Path) -> None:
    page.goto((data_site / "index.html").as_uri() + "#status=stale&device=cpu")
    filtered = visible_rows(page)
    page.locator("td.cell.s-stale:not(.dimmed) a").first.click()
    page.wait_for_url("**/cells/**")
    assert "?back=" in page.url
    page.get_by_role("link", name="← the matrix").click()
    page.wait_for_url("**/index.html#status=stale&device=cpu")
    page.wait_for_load_state()
    assert visible_rows(page) == filtered and page.is_checked('input[name="status"][value="stale"]')


def test_cell_pages_link_the_setup_log_and_show_the_whole_chart(page: Any, data_site: Path) -> None:
    page.goto((data_site / "cells" / "tf-1.15.5-cpu.html").as_uri())
    link = page.get_by_role("link", name="full setup log")
    assert (data_site / "cells" / link.get_attribute("href")).is_file()
    chart = page.locator("svg.chart").first.bounding_box()
    label = page.locator("svg.chart text", has_text="100 steps").first.bounding_box()
    assert label["x"] >= chart["x"] and label["x"] + label["width"] <= chart["x"] + chart["width"]


def test_the_keyboard_reaches_the_first_cell_in_two_presses(page: Any, data_site: Path) -> None:
    """Tab to the skip link, Enter: the first cell of the matrix has the focus, and its numbers show (as the README
    says)."""
    page.goto((data_site / "index.html").as_uri())
    page.keyboard.press("Tab")
    assert page.evaluate("document.activeElement.textContent") == "Skip to the matrix"
    page.keyboard.press("Enter")
    assert page.evaluate("document.activeElement.closest('td.cell') === document.querySelector('#matrix td.cell')")
    assert page.locator("td.cell:focus-within .tip").is_visible()  # and its numbers show


def test_on_a_touch_screen_the_first_tap_shows_the_numbers(browser: Any, data_site: Path) -> None:
    context = browser.new_context(viewport={"width": 390, "height": 844}, has_touch=True, is_mobile=True)
    page = context.new_page()
    page.goto((data_site / "index.html").as_uri())
    cell = page.locator("td.cell.s-wrong").first
    cell.scroll_into_view_if_needed()
    cell.locator("a").tap()
    assert page.url.endswith("index.html") and cell.locator(".tip").is_visible()
    assert "effective updates" in cell.locator(".tip").inner_text()
    cell.locator("a").tap()
    page.wait_for_url("**/cells/**")
    context.close()


@pytest.mark.parametrize("name", ["index.html", "changes.html", "runs.html", "cells/tf-1.15.5-cpu.html",
                                  "cells/tf-2.16.1-cpu.html", "scenarios/keras_bn_custom_estimator.html"])
def test_no_page_overflows_a_phone_screen(browser: Any, tmp_path: Path, data_site: Path, name: str) -> None:
    site = data_site
    if name == "runs.html":  # runs.html needs a results root with history: the real run twice
        root = tmp_path / "results"
        shutil.copytree(REAL_RUN, root / "a")
        shutil.copytree(REAL_RUN, root / "b")
        manifest = json.loads((root / "b" / "manifest.json").read_text())
        (root / "b" / "manifest.json").write_text(json.dumps({**manifest, "run_id": "later",
                                                               "started": "2026-11-28T00:00:00+00:00"}))
        site = tmp_path / "site"
        write_report(root, site)
    context = browser.new_context(viewport={"width": 390, "height": 844}, has_touch=True, is_mobile=True)
    page = context.new_page()
    page.goto((site / name).as_uri())
    assert page.evaluate("document.documentElement.scrollWidth") <= 390, name
    if name == "index.html":  # the matrix scrolls in its own area, the version column staying in view
        area = page.locator("#matrix-area")
        assert area.evaluate("a => a.scrollWidth > a.clientWidth")
        first = page.locator("#matrix tbody th[scope=row]").first
        before = first.bounding_box()["x"]
        area.evaluate("a => { a.scrollLeft = 600; }")
        assert abs(first.bounding_box()["x"] - before) < 1
    context.close()


AXE = REPO / "tests" / "axe" / "node_modules" / "axe-core" / "axe.min.js"
PAGE_TYPES = {"index": "index.html", "version": "versions/2.15.1.html", "cell": "cells/tf-1.15.5-cpu.html",
              "cell not run": "cells/tf-2.15.1-gpu.html", "scenario": "scenarios/keras_bn_custom_estimator.html",
              "changes": "changes.html", "runs": "runs.html", "release candidate": "versions/2.22.0rc0.html"}


@pytest.fixture(scope="module")
def history_site(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The site of a results root holding the real run twice (so that runs.html compares two; the newer with a release
    candidate, which the glance compares with the newest release) and the real bisect."""
    root = tmp_path_factory.mktemp("history") / "results"
    copy_run_started(REAL_RUN, root / "a", "2026-11-27T14:32:12+00:00")
    shutil.copytree(REAL_RUN, root / "b")
    add_candidate(root / "b")
    shutil.copytree(REPO / "tests" / "data" / "bisect", root / "bisect")
    out = root.parent / "public"
    write_report(root, out)
    return out


@pytest.mark.parametrize("scheme", ["light", "dark"])
@pytest.mark.parametrize("width", [1440, 390])
def test_axe_finds_no_violation_on_any_page_type(browser: Any, history_site: Path, scheme: str, width: int) -> None:
    """axe-core (from npm, tests/axe) with its default rules and target-size: nothing on the index, a version page, a
    cell page (one that ran, one that did not), a scenario page, the change points and the runs, in light and dark
    mode, on a desktop and a phone."""
    require(AXE.is_file(), f"no {AXE} (npm ci --prefix tests/axe)")
    context = browser.new_context(viewport={"width": width, "height": 900}, color_scheme=scheme)
    page = context.new_page()
    found = {}
    for kind, relative in PAGE_TYPES.items():
        page.goto((history_site / relative).as_uri())
        page.add_script_tag(path=str(AXE))
        violations = page.evaluate("""async () =>
            (await axe.run(document, {rules: {'target-size': {enabled: true}}})).violations
            .map(v => v.id + ' (' + v.nodes.length + '): ' + v.nodes.slice(0, 2).map(n => n.html).join(' '))""")
        if violations:
            found[kind] = violations
    context.close()
    assert found == {}


def test_on_a_phone_every_answer_of_the_glance_is_in_view_without_a_scroll_area(browser: Any,
                                                                                 data_site: Path) -> None:
    """At 390 px a glance row stacks its name, then each line's answer (its ranges in words), then its strip; every
    answer lies inside the screen, and nothing around the glance scrolls on its own."""
    context = browser.new_context(viewport={"width": 390, "height": 844}, has_touch=True, is_mobile=True)
    page = context.new_page()
    page.goto((data_site / "index.html").as_uri())
    answers = page.eval_on_selector_all("#overview td.ranges", "tds => tds.map(td => td.getBoundingClientRect())"
                                        ".map(r => [r.left, r.right, r.width])")
    assert len(answers) >= 36 and all(left >= 0 and right <= 390 and width > 200 for left, right, width in answers)
    row = page.locator("#overview tbody tr").first
    name, answer, strip = (row.locator(s).first.bounding_box() for s in ("th", "td.ranges", "td.marks"))
    assert name["y"] + name["height"] <= answer["y"] + 1 and answer["y"] + answer["height"] <= strip["y"] + 1
    scrolling = page.evaluate("""() => { const found = []; let node = document.getElementById('overview');
        for (; node; node = node.parentElement) { const style = getComputedStyle(node);
          if (/(auto|scroll)/.test(style.overflowY + style.overflowX) && node.scrollHeight > node.clientHeight + 1)
            found.push(node.tagName + '.' + node.className); } return found; }""")
    assert scrolling == [] and page.evaluate("document.documentElement.scrollWidth") <= 390
    context.close()


def test_filters_and_the_search_box_narrow_the_glance_and_the_matrix(page: Any, data_site: Path) -> None:
    """#status=stale keeps the scenarios, rows and columns with a stale cell (the others' ranges and marks dimmed);
    the search box finds scenarios by their notes as you type; a filter nothing matches says so."""
    page.goto((data_site / "index.html").as_uri() + "#status=stale")
    glance = page.eval_on_selector_all("#overview tbody tr:not([hidden])", "rows => rows.map(r => r.dataset.scenario)")
    assert "keras_bn_custom_estimator" in glance and "keras_fit" not in glance and "layers_bn_session" not in glance
    columns = page.eval_on_selector_all("#matrix th.scenario-name:not([hidden])",
                                        "hs => hs.map(h => h.dataset.scenario)")
    assert set(columns) == set(glance)
    assert page.locator("#overview tr[data-scenario='keras_bn_custom_estimator'] .range:not(.dimmed)").count() == 1
    assert "1.9.0–2.15.1" in page.locator(
        "#overview tr[data-scenario='keras_bn_custom_estimator'] .range:not(.dimmed)").inner_text()
    page.goto((data_site / "index.html").as_uri())
    page.fill("#search", "mirroredstrategy")
    assert page.eval_on_selector_all("#overview tbody tr:not([hidden])", "rows => rows.map(r => r.dataset.scenario)") \
        == ["keras_bn_sync_mirrored", "keras_bn_mirrored_plain", "keras_bn_synchronized_true"]
    assert page.text_content("#search-count") == "3 scenarios match" and "q=mirroredstrategy" in page.url
    page.fill("#search", "no such pattern")
    assert page.locator("#overview-empty").is_visible() and page.locator("#matrix-empty").is_visible()
    page.locator("#overview-empty button").click()
    assert page.locator("#overview tbody tr:not([hidden])").count() == 36 and page.input_value("#search") == ""


def test_a_page_per_version_from_the_picker_and_the_matrix(page: Any, data_site: Path) -> None:
    """"Your TensorFlow version" opens a page with every scenario's verdict on it, the fix beside those that do not
    update; the matrix's version column links the same pages."""
    page.goto((data_site / "index.html").as_uri())
    page.locator("details.picker summary").click()
    page.locator("details.picker").get_by_role("link", name="2.15.1", exact=True).click()
    assert page.url.endswith("versions/2.15.1.html")
    row = page.locator("table.version-table tbody tr", has=page.locator("a", has_text="keras_bn_custom_estimator"))
    assert "stale" in row.first.inner_text()
    row.first.locator("details.fix summary").click()
    assert "Group the Keras layer" in row.first.locator("details.fix").inner_text()
    assert "GPU: not run on this host" in page.locator("main").inner_text()
    assert page.locator("table.version-table tbody tr").count() == 36
    page.get_by_role("link", name="2.16.2 →").click()
    assert page.url.endswith("versions/2.16.2.html")
    assert page.locator("table.version-table thead th").all_inner_texts() == ["scenario", "CPU", "CPU jax",
                                                                              "CPU latest", "CPU tfkeras"]
    page.goto((data_site / "index.html").as_uri())
    assert page.locator("#matrix tr[data-tf='1.15.5'] th a").get_attribute("href") == "versions/1.15.5.html"
    page.goto((data_site / "index.html").as_uri() + "#status=wrong")  # a version or scenario page keeps the filter
    page.locator("#overview tr[data-scenario='layers_bn_session'] th a").click()
    page.wait_for_url("**/scenarios/layers_bn_session.html?back=status%3Dwrong")
    page.get_by_role("link", name="← the matrix").click()
    page.wait_for_url("**/index.html#status=wrong")


def test_the_printout_holds_the_glance_and_every_row_and_column_of_the_matrix(browser: Any, data_site: Path) -> None:
    """Printed (A4 landscape), index.html holds every version and every scenario whatever the filter in the address,
    the matrix fits the page's width, and no form is printed."""
    pypdf = pytest.importorskip("pypdf") if not os.environ.get("CI") else __import__("pypdf")
    context = browser.new_context()
    page = context.new_page()
    page.goto((data_site / "index.html").as_uri() + "#status=wrong&scenario=keras_fit")
    page.emulate_media(media="print")
    width = page.evaluate("document.getElementById('matrix').getBoundingClientRect().right")
    assert width <= 1047, width  # 297 mm less 2 x 10 mm of margin, at 96 px per inch
    pdf = page.pdf(prefer_css_page_size=True, print_background=True)
    context.close()
    pages = [unicodedata.normalize("NFKC", p.extract_text()) for p in pypdf.PdfReader(io.BytesIO(pdf)).pages]
    text = "\n".join(pages)
    exported = json.loads((data_site / "results.json").read_text())
    for version in {c["tf"] for c in exported["cells"]}:
        assert version in text, version
    for name in exported["scenarios"]:
        assert name in text.replace("-\n", "").replace("\n", ""), name
    assert "Find a pattern" not in text and "Show everything" not in text
    # the matrix's TF 1.x rows come on a later page than its head: the scenario names are printed there again
    later = next(page for page in pages if "TensorFlow 1.x" in page).replace("-\n", "").replace("\n", "")
    assert all(name in later for name in exported["scenarios"])


def test_a_hundred_versions_by_forty_scenarios_keep_every_answer_in_view(browser: Any, tmp_path: Path) -> None:
    """benchmarks/report_scale.py's synthetic run at 100 versions x 2 devices x 40 scenarios, a verdict changing every
    10 versions: at 1440 px every answer of the glance starts and ends inside the window, each row shows its newest
    ranges (the earlier ones counted and linked), and the strip keeps its width."""
    spec = importlib.util.spec_from_file_location("report_scale", REPO / "benchmarks" / "report_scale.py")
    assert spec and spec.loader
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    run = module.synthetic_run(tmp_path / "run", versions=100, scenarios=40, block=10)
    write_report(run, tmp_path / "site")
    context = browser.new_context(viewport={"width": 1440, "height": 900})
    page = context.new_page()
    page.goto((tmp_path / "site" / "index.html").as_uri())
    answers = page.eval_on_selector_all("#overview td.ranges", "tds => tds.map(td => td.getBoundingClientRect())"
                                        ".map(r => [r.left, r.right])")
    assert len(answers) == 80 and all(left >= 0 and right <= 1440 for left, right in answers)
    assert {round(w) for w in page.eval_on_selector_all("#overview .strip", "s => s.map(e => e.offsetWidth)")} == {112}
    assert page.locator("#overview a.earlier").first.inner_text() == "5 earlier ranges"
    rows = page.eval_on_selector_all("#overview tbody tr", "rs => rs.map(r => r.getBoundingClientRect().height)")
    assert max(rows) < 200, max(rows)
    context.close()


def test_no_version_number_breaks_across_lines_and_tooltips_stay_on_screen(browser: Any, data_site: Path,
                                                                            history_site: Path) -> None:
    """On a phone no version (1.10.1) or number (0.95095149) is split over two lines on any page type; a cell's
    numbers open as a panel inside the screen that names the version and scenario, and on a desktop the numbers of
    the last column open to the cell's left, and those of the last row above it."""
    context = browser.new_context(viewport={"width": 390, "height": 844}, has_touch=True, is_mobile=True)
    page = context.new_page()
    for relative in PAGE_TYPES.values():
        page.goto((history_site / relative).as_uri())
        broken = page.evaluate("""() => { const found = []; const walker = document.createTreeWalker(document.body,
            NodeFilter.SHOW_TEXT); for (let node = walker.nextNode(); node; node = walker.nextNode()) {
              if (node.parentElement.closest('code, pre')) continue;  // a path or command may break anywhere
              for (const m of node.textContent.matchAll(/\\d+(?:\\.\\d+)+/g)) { const range = document.createRange();
                range.setStart(node, m.index); range.setEnd(node, m.index + m[0].length);
                const lines = new Set([...range.getClientRects()].map(r => Math.round(r.top)));
                if (lines.size > 1) found.push(m[0]); } } return found; }""")
        assert broken == [], relative
    page.goto((data_site / "index.html").as_uri())
    cell = page.locator("td.cell.s-wrong").first
    cell.scroll_into_view_if_needed()
    cell.locator("a").tap()
    box = cell.locator(".tip").bounding_box()
    assert box["x"] >= 0 and box["x"] + box["width"] <= 390 and box["y"] + box["height"] <= 844
    assert cell.locator(".tip .where").inner_text().startswith("TF ")
    context.close()
    context = browser.new_context(viewport={"width": 1440, "height": 900})
    page = context.new_page()
    page.goto((data_site / "index.html").as_uri())
    last = page.locator("#matrix tbody tr[data-tf] td.cell").last
    last.scroll_into_view_if_needed()
    last.hover()
    box = last.locator(".tip").bounding_box()
    right = page.evaluate("document.documentElement.clientWidth + window.scrollX")
    assert box["x"] + box["width"] <= right
    assert box["y"] + box["height"] <= 900  # the last row's numbers open above it
    context.close()


def test_no_link_of_the_site_is_dead(data_site: Path, history_site: Path) -> None:
    """Every relative link of every page leads to a file of the site (a cell that did not run links no setup log),
    and the results archive is linked from every page of a results root."""
    for site in (data_site, history_site):
        for page in site.rglob("*.html"):
            text = page.read_text(encoding="utf-8")
            for target in re.findall(r'(?:href|src)="([^"#?]+)', text):
                if "://" in target or target.startswith("mailto:"):
                    continue
                assert (page.parent / target).exists(), (page.relative_to(site), target)
        assert 'href="results-archive.tar.gz"' in (site / "index.html").read_text(encoding="utf-8")
        assert (site / "results-archive.tar.gz").is_file()
