"""The Search tab: an attribute query, free text, a query photo or photo + terms -> the images that
satisfy it, each with why (its terms' own probabilities), facets to refine, a hit's heatmaps and
"more like this", downloads, and the query in the page URL so a search can be shared.

Layout and events only: results come from `Service.search` (one `cocoattr.search.find` for the
tab, the /search API and the CLI), what the page writes from `cocoattr.ui.search_view`.
"""

from __future__ import annotations

from typing import Any

import gradio as gr

from cocoattr.errors import UserError
from cocoattr.search import Hit
from cocoattr.serving import EMPTY_QUERY, Service, row_image, search_tile
from cocoattr.ui import search_view as view
from cocoattr.ui.export import write_exports
from cocoattr.ui.widgets import UI, image_input

QUERY_EXAMPLES = (
    "furry animal",
    "metal, vehicle",
    "spotted, animal",
    "furry, -cat",
    "a cup of coffee on a table",
)
# Responsive result grids: as many ~150 px columns as fit (2 on a phone) instead of a fixed 6
# whose last tiles fall off a narrow screen.
GRID_CSS = """<style>
#search-results .grid-container, #search-heatmaps .grid-container {
  grid-template-columns: repeat(auto-fill, minmax(150px, 1fr)) !important; padding-top: 26px; }
#search-results .grid-wrap, #search-heatmaps .grid-wrap { max-height: none !important; min-height: 0 !important; }
@media (max-width: 640px) {
  #search-results .grid-container, #search-heatmaps .grid-container {
    grid-template-columns: repeat(2, minmax(0, 1fr)) !important; } }
</style>"""
# The results table; on a phone each row becomes a small card with labelled cells.
TABLE_CSS = """
.search-table { overflow-x: auto; max-width: 100%; }
table { border-collapse: collapse; width: 100%; font-size: 0.9em; }
th, td { padding: 4px 8px; border-bottom: 1px solid var(--border-color-primary); text-align: left;
  vertical-align: top; }
td.ok { font-weight: 600; color: var(--color-accent); }
td.no { opacity: 0.6; }
td.name { word-break: break-all; min-width: 9em; }
td.caption { min-width: 16em; }
td .label { display: none; }
@media (max-width: 640px) {
  thead { display: none; }
  tr { display: block; padding: 6px 0; border-bottom: 1px solid var(--border-color-primary); }
  td { display: inline-block; border: none; padding: 2px 6px; min-width: 0 !important; }
  td .label { display: inline; opacity: 0.7; font-weight: normal; }
  td.name, td.caption { display: block; }
}
"""
# Keep the search in the page URL (?q=...&like=...&n=...) so it can be shared; other parameters stay.
URL_JS = """(share) => {
  const u = new URL(window.location.href);
  ["q", "like", "n"].forEach((k) => u.searchParams.delete(k));
  new URLSearchParams(share || "").forEach((v, k) => u.searchParams.set(k, v));
  window.history.replaceState(window.history.state, "", u);
}"""
# On a phone the results sit below the query photo: bring them into view after a search.
SCROLL_JS = """() => {
  if (window.innerWidth < 768) document.getElementById("search-notes")?.scrollIntoView({block: "start"});
}"""
SCROLL_HIT_JS = """() => {
  if (window.innerWidth < 768) document.getElementById("search-hit")?.scrollIntoView({block: "start"});
}"""


class _Page:
    """The tab's components, so handlers return {component: value} for just what they change."""

    def __init__(self, s: Service) -> None:
        self.s = s

    def unchanged(self) -> dict:
        """Nothing to update (gradio reads an empty dict as one missing value)."""
        return {self.notes: gr.skip()}

    def cleared(self, note: str) -> dict:
        """An empty result: the note replaces the previous query's, nothing stale stays."""
        return {
            self.results: [], self.notes: note, self.facets: gr.Radio(choices=[], value=None, visible=False),
            self.table: "", self.more: gr.Button(visible=False), self.dl_json: gr.DownloadButton(visible=False),
            self.dl_csv: gr.DownloadButton(visible=False), self.hits: [], self.detail: gr.Column(visible=False),
        }  # fmt: skip

    def run(self, query: str, image: str | None, like: str | None, n: int) -> dict:
        """Search and fill every result component (or explain, in the note, why there is nothing)."""
        query, n = (query or "").strip(), max(1, min(int(n), view.MAX_SHOWN))
        base = {self.shown: n, self.like: like, self.share: view.share_query(query, like, n)}
        if not query and not image and not like:
            return base | self.cleared(f"Type attributes ({EMPTY_QUERY}) or drop a photo.")
        photo = bool(image) and not like
        try:
            res = self.s.search(query, n, image, like=like, cutoff=True)
        except UserError as e:
            return base | self.cleared(view.no_results_note(query, str(e), like, photo))
        note = view.results_note(res, query, like, photo)
        if res.matching == 0:
            note += view.closest_note(self.s.search(query, 1, image, like=like).hits[0])
        left = (res.total if res.matching is None else res.matching) - len(res.hits)
        out = base | self.cleared(note)
        if not res.hits:
            return out
        json_file, csv_file = write_exports(res, query, like, photo)
        choices = view.facet_choices(res)
        return out | {
            self.results: [search_tile(h, i) for i, h in enumerate(res.hits)],
            self.facets: gr.Radio(choices=choices, value=None, visible=bool(choices)),
            self.table: view.table_html(res.hits), self.hits: res.hits,
            self.more: gr.Button(f"Load more ({left} more)", visible=left > 0 and n < view.MAX_SHOWN),
            self.dl_json: gr.DownloadButton(value=str(json_file), visible=True),
            self.dl_csv: gr.DownloadButton(value=str(csv_file), visible=True),
        }  # fmt: skip

    def add(self, query: str, image: str | None, like: str | None, term: str | None, mode: str) -> dict:
        """Add an attribute (a facet, a suggestion or the best completion) to the query and search."""
        if not term:
            return self.unchanged()
        query = view.add_term(query, term, mode == "exclude")
        return self.run(query, image, like, view.PAGE) | {
            self.query: query, self.add_box: "", self.suggest: gr.Radio(choices=[], value=None, visible=False)
        }  # fmt: skip

    def complete(self, query: str, image: str | None, like: str | None, typed: str, mode: str) -> dict:
        """Enter in the attribute box: the best completion of what is typed ('red' -> red)."""
        best = view.complete(typed or "", self.s.names, 1)
        if not best:
            gr.Warning(f"No attribute matches '{(typed or '').strip()}'.")
            return self.unchanged()
        exclude = mode == "exclude" or (typed or "").strip().startswith("-")
        return self.add(query, image, like, best[0], "exclude" if exclude else "include")

    def suggestions(self, typed: str) -> gr.Radio:
        choices = view.complete(typed or "", self.s.names)
        return gr.Radio(choices=choices, value=None, visible=bool(choices))

    def select(self, hits: list[Hit], evt: gr.SelectData) -> dict:
        """A click on a hit: its card (each term's probability, captions) and its heatmaps."""
        i = int(evt.index) if evt.index is not None else -1
        if not 0 <= i < len(hits):
            return {self.selected: gr.skip()}
        h = hits[i]
        keys = list(h.attributes) if h.from_terms else list(h.attributes)[:3]
        card = view.hit_card(h, i + 1)
        try:
            tiles = self.s.hit_heatmaps(h, keys)
        except UserError as e:
            tiles, card = [], card + f"\n\nNo heatmaps: {e}"
        return {self.card: card, self.heat: tiles, self.detail: gr.Column(visible=True), self.selected: i}

    def more_like(self, hits: list[Hit], selected: int | None) -> dict:
        """Query by the selected hit's own image (its stored embedding): it goes into the photo slot."""
        if selected is None or not 0 <= selected < len(hits):
            return self.unchanged()
        h = hits[selected]
        return self.run("", None, h.image, view.PAGE) | {self.query: "", self.image: search_tile(h, 0)[0]}

    def load(self, request: gr.Request) -> dict:
        """A shared URL (?q=...&like=...&n=...): fill the tab, run the search, show the tab."""
        params = dict(request.query_params) if request is not None else {}
        query, like, n = view.read_share(params)
        if not query and not like:
            return self.unchanged()
        out = self.run(query, None, like, n) | {self.query: query}
        index = self.s.index
        if like and like in index.paths:
            row = index.paths.index(like)
            out[self.image] = row_image(index.path(row), index.thumbnails[row] if index.thumbnails else None)
        if self.tabs is not None:
            out[self.tabs] = gr.Tabs(selected="search")
        return out


def _layout(p: _Page) -> None:
    with gr.Row():
        with gr.Column(scale=3, min_width=300):
            p.query = gr.Textbox(
                label="query",
                placeholder="red, furry, -indoor   or   a dog on a beach",
                info="attributes separated by commas; -x excludes x; x^2 weighs x twice; anything else is free text",
                elem_id="search-query",
            )
            with gr.Row():
                p.add_box = gr.Textbox(
                    label="add an attribute (type, then Enter or pick a suggestion)",
                    placeholder="e.g. red",
                    scale=3,
                    min_width=180,
                    elem_id="search-add",
                )
                p.mode = gr.Radio(["include", "exclude"], value="include", label="as", scale=1, min_width=150)
            p.suggest = gr.Radio(choices=[], label="suggestions", visible=False, elem_id="search-suggest")
            p.examples_box = gr.Column()
        with gr.Column(scale=2, min_width=260):
            p.image = image_input(
                label="…or search by photo (typed terms combine with it)",
                height=200,
                sources=["upload", "clipboard"],
                elem_id="search-image",
            )
            p.button = gr.Button("Search", variant="primary", elem_id="search-go")
    p.notes = gr.Markdown(elem_id="search-notes")
    p.facets = gr.Radio(
        choices=[],
        label="most frequent among the results (how many show it): click to add it, as include or exclude",
        visible=False,
        elem_id="search-facets",
    )
    with gr.Row():
        with gr.Column(scale=3, min_width=300):
            p.results = gr.Gallery(
                label="results (click one for its heatmaps)", columns=6, height="auto",
                allow_preview=False, elem_id="search-results",
            )  # fmt: skip
            p.more = gr.Button("Load more", visible=False, elem_id="search-more")
        with gr.Column(scale=2, min_width=280, visible=False) as p.detail:
            p.card = gr.Markdown(elem_id="search-hit")
            p.heat = gr.Gallery(
                label="where the model sees the query's attributes here", columns=3, height="auto",
                format="jpeg", elem_id="search-heatmaps",
            )  # fmt: skip
            p.like_button = gr.Button("More like this", elem_id="search-like")
    p.table = gr.HTML(css_template=TABLE_CSS, elem_id="search-table", js_on_load=None)
    with gr.Row():
        p.dl_json = gr.DownloadButton("Download JSON", visible=False, elem_id="search-json")
        p.dl_csv = gr.DownloadButton("Download CSV", visible=False, elem_id="search-csv")
    p.share = gr.Textbox(visible="hidden", elem_id="search-share")
    p.hits, p.shown, p.like, p.selected = gr.State([]), gr.State(view.PAGE), gr.State(None), gr.State(None)


def _wire(p: _Page) -> None:
    out = [p.results, p.notes, p.facets, p.table, p.more, p.dl_json, p.dl_csv, p.hits, p.shown, p.like,
           p.share, p.detail, p.selected, p.query, p.image, p.add_box, p.suggest]  # fmt: skip

    def shared(event: Any) -> Any:
        return event.then(None, p.share, None, js=URL_JS, **UI)

    hidden = {"show_progress": "hidden", **UI}
    shared(gr.on([p.button.click, p.query.submit], lambda q, im, lk: p.run(q, im, lk, view.PAGE),
                 [p.query, p.image, p.like], out, **UI))  # fmt: skip
    shared(p.image.upload(lambda q, im: p.run(q, im, None, view.PAGE), [p.query, p.image], out, **UI)).then(
        None, js=SCROLL_JS, **UI
    )
    shared(p.image.clear(lambda q: p.run(q, None, None, view.PAGE), [p.query], out, **UI))
    shared(p.more.click(lambda q, im, lk, n: p.run(q, im, lk, n + view.PAGE),
                        [p.query, p.image, p.like, p.shown], out, **UI))  # fmt: skip
    for pick in (p.facets, p.suggest):
        shared(pick.input(p.add, [p.query, p.image, p.like, pick, p.mode], out, **UI))
    # Suggestions run in one queue lane, first come first served: Enter adds the best completion,
    # then asks the (now empty) box for suggestions in that lane, so a suggestion for 'red' still on
    # its way (the page sends the last keystroke's event once the previous one returns) is answered
    # before it and cannot reappear after the term was added.
    lane = {"concurrency_id": "search-suggest", "concurrency_limit": 1}
    typing = p.add_box.input(
        p.suggestions, p.add_box, p.suggest, trigger_mode="always_last", **lane, **hidden
    )
    shared(
        p.add_box.submit(
            p.complete, [p.query, p.image, p.like, p.add_box, p.mode], out, cancels=[typing], **UI
        ).then(p.suggestions, p.add_box, p.suggest, **lane, **hidden)
    )
    p.results.select(p.select, p.hits, [p.card, p.heat, p.detail, p.selected], **UI).then(
        None, js=SCROLL_HIT_JS, **UI
    )
    shared(p.like_button.click(p.more_like, [p.hits, p.selected], out, **UI))
    p.tabs = p.tab.parent if isinstance(p.tab.parent, gr.Tabs) else None
    shared(gr.on(None, p.load, None, out + ([p.tabs] if p.tabs is not None else []), **UI))
    with p.examples_box:  # a click fills the box and runs the search (not only fills it)
        examples = gr.Examples([[q] for q in QUERY_EXAMPLES], inputs=[p.query], label="try (click to search)")
    shared(examples.load_input_event.then(lambda q: p.run(q, None, None, view.PAGE) | {p.image: None},
                                          p.query, out, **UI))  # fmt: skip


def search_tab(s: Service) -> None:
    """The Search tab (see the module docstring); `app.py` calls it inside its gr.Tabs."""
    p = _Page(s)
    with gr.Tab("Search", id="search") as p.tab:
        gr.HTML(value="", head=GRID_CSS, elem_id="search-css")
        _layout(p)
        _wire(p)
