"""The Search tab over a COCO-format index (#13), in a real headless Chromium: the app serves an
index built by `build_coco_index` from fixtures in the real COCO layout (captions + instances JSON,
real photos; tests/test_coco_index.py), found through COCOATTR_IMAGES / COCOATTR_INDEX, and every
hit shows its COCO caption and ground-truth categories in the table, all its captions in the card.

Uses Debian's `chromium` through Playwright like tests/test_app_browser.py (its `browser`
fixture). Screenshot: tests/artifacts/app_search_coco.png.
"""

from __future__ import annotations

import re
from collections.abc import Iterator

import pytest
from conftest import AppServer, _free_port, _wait_served
from test_app_browser import TIMEOUT_MS, browser  # noqa: F401 - the shared browser fixture
from test_coco_index import PHOTOS, write_coco

from cocoattr.coco_index import build_coco_index
from cocoattr.index import Index
from cocoattr.search import find

pytestmark = [pytest.mark.browser, pytest.mark.filterwarnings("ignore::Warning:gradio.queueing")]
THUMB = re.compile(r"^Thumbnail \d+ of \d+")
QUERY = "animal"


@pytest.fixture(scope="module")
def coco_app(app_predictor, tmp_path_factory) -> Iterator[AppServer]:
    """The app serving a COCO val2017 index of the fixture photos, on 127.0.0.1:<free port>."""
    import app

    root = write_coco(tmp_path_factory.mktemp("coco-app") / "data")
    index_file = root.parent / "val2017.npz"
    build_coco_index(root, "val2017", index_file, app_predictor, progress=False)
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("COCOATTR_IMAGES", str(root / "coco" / "val2017"))
        mp.setenv("COCOATTR_INDEX", str(index_file))
        demo = app.build_demo(predictor=app_predictor)
    port = _free_port()
    demo.launch(server_name="127.0.0.1", server_port=port, prevent_thread_lock=True, quiet=True,
                **app.LAUNCH_KWARGS)  # fmt: skip
    url = f"http://127.0.0.1:{port}/"
    try:
        _wait_served(url)
        yield AppServer(url, demo, index_file, 0.0)
    finally:
        demo.close()


def test_search_tab_shows_coco_captions_and_categories(browser, coco_app, app_artifacts) -> None:  # noqa: F811
    from playwright.sync_api import expect

    index = Index.load(coco_app.index_file)
    assert index.records is not None and index.info["kind"] == "coco"
    hits = find(index, QUERY, k=len(index), cutoff=True).hits  # what the tab must show, best first
    assert hits, "the query has hits over the fixture"

    expect.set_options(timeout=TIMEOUT_MS)
    context = browser.new_context(viewport={"width": 1280, "height": 900}, device_scale_factor=1)
    page = context.new_page()
    page.set_default_timeout(TIMEOUT_MS)
    errors: list[str] = []
    page.on("pageerror", lambda e: errors.append(str(e)))
    page.goto(coco_app.url + f"?q={QUERY}", wait_until="domcontentloaded")
    notes = page.locator("#search-notes")
    expect(notes).to_contain_text(f"of {len(index)} images")
    tiles = page.locator("#search-results").get_by_role("button", name=THUMB)
    expect(tiles).to_have_count(min(12, len(hits)))

    table = page.locator("#search-table")
    expect(table).to_contain_text("COCO categories")
    rows = table.locator("tbody tr")
    expect(rows).to_have_count(min(12, len(hits)))
    for i, hit in enumerate(hits[:12]):
        photo, captions, categories = PHOTOS[hit.coco_id]
        row = rows.nth(i)
        expect(row).to_contain_text(captions[0])  # the COCO caption, from the index alone
        expect(row).to_contain_text(", ".join(sorted(categories)) if categories else "COCO:")
    page.screenshot(path=str(app_artifacts / "app_search_coco.png"), full_page=True)

    tiles.first.click()  # the card: every caption of the best hit and its ground-truth categories
    card = page.locator("#search-hit")
    _, captions, categories = PHOTOS[hits[0].coco_id]
    for c in captions:
        expect(card).to_contain_text(c)
    if categories:
        expect(card).to_contain_text(f"COCO categories: {', '.join(sorted(categories))}")
    expect(card).to_contain_text(f"COCO image {hits[0].coco_id}")
    assert not errors, errors
    context.close()
