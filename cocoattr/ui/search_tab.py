"""The Search tab: attribute query, free text or a query photo -> ranked images with why they rank."""

from __future__ import annotations

import gradio as gr

from cocoattr.serving import EMPTY_QUERY, Service, search_tile
from cocoattr.ui.widgets import UI, image_input, user_errors

QUERY_EXAMPLES = (
    "furry animal",
    "red, -indoor",
    "striped^2, animal",
    "a cup of coffee on a table",
    "metal, vehicle",
)


def _search_tiles(s: Service, query: str, image: str | None, top_k: float) -> tuple:
    """The Search tab's (gallery tiles, notes) for a query or a query photo."""
    query = (query or "").strip()
    if not query and not image:
        gr.Warning(f"Empty query: {EMPTY_QUERY}, or drop a photo.")
        return [], ""
    result = user_errors(s.search)(query if not image else "", int(top_k), image or None)
    tiles = [search_tile(h, i) for i, h in enumerate(result.hits)]
    what = "the query photo" if image else f"`{query}`"
    notes = f"{len(result.hits)} of {len(s.index)} images for {what}."
    if result.notes:
        notes += " Read as: " + "; ".join(result.notes)
    return tiles, notes


def _add_term(query: str, term: str | None, mode: str) -> tuple:
    """Append the picked attribute (negated for 'exclude') to the query box, then clear the picker."""
    if not term:
        return gr.Textbox(), gr.Dropdown()
    term = ("-" if mode == "exclude" else "") + term
    query = (query or "").strip().rstrip(",")
    return (f"{query}, {term}" if query else term), gr.Dropdown(value=None)


def search_tab(s: Service) -> None:
    """Attribute query, free text or a query photo -> a gallery of ranked images with why they rank."""
    with gr.Tab("Search", id="search"):
        with gr.Row():
            with gr.Column(scale=3):
                query = gr.Textbox(
                    label="query",
                    placeholder="red, furry, -indoor   or   a dog on a beach",
                    info="attributes separated by commas; -x excludes x; x^2 weighs x twice; anything else is free text",
                    elem_id="search-query",
                )
                with gr.Row():
                    pick = gr.Dropdown(
                        choices=sorted(s.names),
                        value=None,
                        filterable=True,
                        scale=3,
                        label="add an attribute (type to autocomplete)",
                    )
                    mode = gr.Radio(["include", "exclude"], value="include", label="as", scale=1)
                gr.Examples([[q] for q in QUERY_EXAMPLES], inputs=[query], label="try")
            with gr.Column(scale=2):
                image = image_input(
                    label="…or search by photo",
                    height=200,
                    sources=["upload", "clipboard"],
                    elem_id="search-image",
                )
                top_k = gr.Slider(1, 48, value=12, step=1, label="results")
                button = gr.Button("Search", variant="primary")
        notes = gr.Markdown(elem_id="search-notes")
        results = gr.Gallery(label="results", columns=6, height="auto", elem_id="search-results")

    def ui_search(query: str, image: str | None, top_k: float) -> tuple:
        return _search_tiles(s, query, image, top_k)

    inputs, outputs = [query, image, top_k], [results, notes]
    gr.on([button.click, query.submit], ui_search, inputs, outputs, **UI)
    image.upload(ui_search, inputs, outputs, **UI)
    pick.input(_add_term, [query, pick, mode], [query, pick], show_progress="hidden", **UI)
