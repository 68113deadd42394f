"""The Search tab in a real headless Chromium, at desktop (1280x900) and phone (390x844) widths:
autocomplete, the note for a query with no result, examples that run, facets, photo + terms, a
hit's heatmaps and "more like this", load more, the downloads, the URL that shares a search.

Uses Debian's `chromium` through Playwright like tests/test_app_browser.py (its `browser` fixture:
a missing browser fails the run unless COCOATTR_SKIP_BROWSER=1). Expected counts come from the
app's own index. Screenshots go to tests/artifacts/ (app_search_facets.png, app_search_phone.png).
"""

from __future__ import annotations

import csv
import io
import re
from urllib.parse import parse_qs, urlparse

import pytest
from test_app_browser import GALLERY, TIMEOUT_MS, browser, grid_columns, page_width  # noqa: F401 - the shared browser fixture

from cocoattr.index import Index
from cocoattr.search import CUTOFF

pytestmark = [pytest.mark.browser, pytest.mark.filterwarnings("ignore::Warning:gradio.queueing")]
THUMB = re.compile(r"^Thumbnail \d+ of \d+")


@pytest.fixture(scope="module")
def index(app_server) -> Index:
    return Index.load(app_server.index_file)


def _satisfying(index: Index, include: list[str], exclude: list[str] = ()) -> int:
    cols = [index.attributes.index(a) for a in include]
    neg = [index.attributes.index(a) for a in exclude]
    p = index.probs.astype("float32")
    return int((((p[:, cols] >= CUTOFF).all(1)) & ((1 - p[:, neg] >= CUTOFF).all(1))).sum())


def _open(browser, app_server, width: int, height: int, query: str = ""):  # noqa: F811
    from playwright.sync_api import expect

    expect.set_options(timeout=TIMEOUT_MS)
    context = browser.new_context(viewport={"width": width, "height": height}, device_scale_factor=1)
    page = context.new_page()
    page.set_default_timeout(TIMEOUT_MS)
    page.errors = []  # type: ignore[attr-defined]
    page.on("pageerror", lambda e: page.errors.append(str(e)))  # type: ignore[attr-defined]
    page.goto(app_server.url + query, wait_until="domcontentloaded")
    page.get_by_role("tab", name="Search").wait_for()
    return context, page


def _tiles(page):
    return page.locator("#search-results").get_by_role("button", name=THUMB)


def _notes(page) -> str:
    return page.locator("#search-notes").inner_text()


def test_search_at_desktop_width(browser, app_server, index, app_artifacts) -> None:  # noqa: F811, PLR0915
    from playwright.sync_api import expect

    context, page = _open(browser, app_server, 1280, 900)
    page.get_by_role("tab", name="Search").click()
    notes, query = page.locator("#search-notes"), page.locator("#search-query textarea")

    # Autocomplete: 'red' then Enter adds red (not 'checkered', the first substring match A-Z).
    add = page.locator("#search-add textarea")
    add.click()
    add.press_sequentially("red")
    expect(page.locator("#search-suggest")).to_contain_text("checkered")  # both are offered...
    add.press("Enter")
    expect(notes).to_contain_text(f"{_satisfying(index, ['red'])} of {len(index)} images satisfy")
    assert query.input_value() == "red"  # ...and Enter picks the exact name
    expect(page.locator("#search-suggest")).to_be_hidden()
    expect(add).to_have_value("")
    expect(_tiles(page)).to_have_count(min(12, _satisfying(index, ["red"])))

    # A query with no attribute replaces the previous line with a note that says so; no stale tiles.
    query.fill("zzzz")
    query.press("Enter")
    expect(notes).to_contain_text("No results for zzzz")
    assert f"of {len(index)} images" not in _notes(page) and "nothing in the query matches" in _notes(page)
    expect(_tiles(page)).to_have_count(0)

    # An example runs when clicked (it does not only fill the box), and the URL holds the query.
    page.locator("button", has_text=re.compile(r"^metal, vehicle$")).click()
    n = _satisfying(index, ["metal", "vehicle"])
    expect(notes).to_contain_text(f"{n} of {len(index)} images satisfy metal, vehicle")
    assert query.input_value() == "metal, vehicle"
    expect(_tiles(page)).to_have_count(min(12, n))
    assert parse_qs(urlparse(page.url).query)["q"] == ["metal, vehicle"]
    expect(page.locator("#search-table")).to_contain_text("P(metal)")

    # A facet click adds its attribute as a term (include, then exclude) and searches again.
    facet = page.locator("#search-facets label").first
    name = facet.inner_text().split(" · ")[0]
    page.screenshot(path=str(app_artifacts / "app_search_facets.png"), full_page=True)
    facet.click()
    expect(query).to_have_value(f"metal, vehicle, {name}")
    expect(notes).to_contain_text(f"satisfy metal, vehicle, {name}")
    page.locator("#search-facets").wait_for()
    page.get_by_role("radio", name="exclude").check()
    other = page.locator("#search-facets label").first.inner_text().split(" · ")[0]
    page.locator("#search-facets label").first.click()
    expect(query).to_have_value(f"metal, vehicle, {name}, -{other}")

    # Photo + text: the typed terms filter, the photo ranks; the furry lion itself fails -furry.
    query.fill("-furry")
    page.locator("#search-image input[type=file]").set_input_files(str(GALLERY / "gradio_lion.jpg"))
    expect(notes).to_contain_text(
        f"{_satisfying(index, [], ['furry'])} of {len(index)} images satisfy -furry with the query photo"
    )
    expect(page.locator("#search-table")).to_contain_text("P(not furry)")
    assert "gradio_lion.jpg" not in page.locator("#search-table").inner_text()

    # Load more: 12 first, then the rest of those that satisfy the query.
    more = page.locator("#search-more")
    expect(more).to_contain_text(f"Load more ({_satisfying(index, [], ['furry']) - 12} more)")
    more.click()
    expect(_tiles(page)).to_have_count(min(24, _satisfying(index, [], ["furry"])))

    # A click on a hit: its card (each term's probability, its captions) and its heatmaps.
    _tiles(page).first.click()
    card = page.locator("#search-hit")
    expect(card).to_contain_text("#1")
    expect(card).to_contain_text("P(not furry)")
    expect(page.locator("#search-heatmaps img").first).to_be_visible()
    expect(page.locator("#search-heatmaps")).to_contain_text("furry: P(not furry)")
    first = card.locator("code").first.inner_text()

    # More like this: that hit's own image queries the index; the URL can share it.
    page.locator("#search-like").click()
    expect(notes).to_contain_text(f"images like {first}")
    expect(page.locator("#search-table tbody tr").first).to_contain_text(first)  # itself, cosine 1
    assert parse_qs(urlparse(page.url).query)["like"] == [first]

    # The downloads: a CSV of the shown hits with paths, scores and the matched attributes.
    with page.expect_download() as got:
        page.locator("#search-csv").click()
    rows = list(csv.DictReader(io.StringIO(open(got.value.path(), encoding="utf-8").read())))
    assert (
        len(rows) == 12
        and rows[0]["image"] == first
        and float(rows[0]["score"]) == pytest.approx(1, abs=1e-3)
    )
    assert set(rows[0]) >= {"rank", "image", "score", "matched", "caption"}
    assert not page.errors, page.errors  # type: ignore[attr-defined]
    context.close()


def test_a_shared_url_brings_the_search_back(browser, app_server, index) -> None:  # noqa: F811
    from playwright.sync_api import expect

    context, page = _open(browser, app_server, 1280, 900, "?q=furry%2C+-cat&n=3")
    expect(page.get_by_role("tab", name="Search")).to_have_attribute("aria-selected", "true")
    n = _satisfying(index, ["furry"], ["cat"])
    expect(page.locator("#search-notes")).to_contain_text(
        f"{n} of {len(index)} images satisfy furry, -cat; showing {min(3, n)}"
    )
    expect(page.locator("#search-query textarea")).to_have_value("furry, -cat")
    expect(_tiles(page)).to_have_count(min(3, n))
    # one button per tab once the Search tab is open (a component between two tabs made gradio
    # draw the Search button twice)
    expect(page.get_by_role("tab")).to_have_text(["Predict", "Heatmaps", "Search"])
    page.goto(app_server.url + "?like=..%2F..%2Fetc%2Fpasswd", wait_until="domcontentloaded")
    expect(page.locator("#search-notes")).to_contain_text(
        "No results for images like ../../etc/passwd: '../../etc/passwd' is not an image of this index"
    )
    expect(_tiles(page)).to_have_count(0)
    assert not page.errors, page.errors  # type: ignore[attr-defined]
    context.close()


def test_search_at_phone_width(browser, app_server, index, app_artifacts) -> None:  # noqa: F811
    from playwright.sync_api import expect

    context, page = _open(browser, app_server, 390, 844, "?q=animal")
    n = _satisfying(index, ["animal"])
    expect(page.locator("#search-notes")).to_contain_text(f"{n} of {len(index)} images satisfy animal")
    expect(_tiles(page)).to_have_count(min(12, n))
    columns = grid_columns(page, "#search-results")
    assert len(columns.split()) == 2, columns
    right = page.evaluate(
        "() => Math.max(...[...document.querySelectorAll('#search-results button img')]"
        ".map(i => i.getBoundingClientRect().right))"
    )
    assert right <= 390, "every tile is on screen (none off to the right)"
    assert page_width(page) <= 390, "nothing scrolls sideways"
    row = page.locator("#search-table tbody tr").first
    assert row.bounding_box()["width"] <= 390 and "P(animal)" in row.inner_text(), (
        "rows become labelled cards"
    )
    page.screenshot(path=str(app_artifacts / "app_search_phone.png"), full_page=True)

    # After a photo upload the results are brought into view (they sit below the photo on a phone).
    page.locator("#search-query textarea").fill("")
    page.evaluate("() => window.scrollTo(0, 0)")
    assert page.locator("#search-notes").bounding_box()["y"] > 844, "below the fold before the upload"
    page.locator("#search-image input[type=file]").set_input_files(str(GALLERY / "skimage_coffee.jpg"))
    expect(page.locator("#search-notes")).to_contain_text("for the query photo")
    page.wait_for_function("() => document.getElementById('search-notes').getBoundingClientRect().top < 844")
    top = page.locator("#search-notes").bounding_box()["y"]
    assert -2 <= top < 844, top
    expect(page.locator("#search-results .pending")).to_have_count(0)
    page.wait_for_timeout(500)  # let the tiles finish fading in
    page.screenshot(path=str(app_artifacts / "app_search_phone_photo.png"))
    assert not page.errors, page.errors  # type: ignore[attr-defined]
    context.close()
