"""What the whole page shares, passed to `launch(css=..., js=...)` (gradio 6 takes them there):
the phone layout of the Predict and Heatmaps tabs, and Enter applying a number box.

On a phone gradio stacks a tab's columns, so everything in the left column (the photo, then its
sliders and examples) came before the results: after an upload they started ~1100 px down and
nothing seemed to happen. Below 768 px the left column dissolves (`display: contents`) and its
parts are reordered: photo, results, then the controls. The Heatmaps strip gets 3 tiles a row
instead of 6 fixed ones, of which only the first 3 fit on a 390 px screen; at every width the
strip is as tall as its tiles (gradio's "auto" height left an empty box below them).
"""

from __future__ import annotations

PHONE = 767  # px: at this width and below, the phone layout
STRIP_COLUMNS = 3  # Heatmaps tiles per row on a phone

CSS = f"""
@media (max-width: {PHONE}px) {{
  #predict-row, #heatmap-row {{ flex-wrap: wrap !important; }}
  #predict-input, #heatmap-input {{ display: contents !important; }}
  #predict-input > *, #heatmap-input > *, #predict-output, #heatmap-output {{
    flex: 1 1 100% !important; min-width: 100% !important; }}
  #predict-image, #heatmap-image {{ order: 0; }}
  #predict-output, #heatmap-output {{ order: 1; }}
  #predict-controls, #heatmap-controls {{ order: 2; }}
  #heatmap-tiles .grid-container {{
    grid-template-columns: repeat({STRIP_COLUMNS}, minmax(0, 1fr)) !important; }}
}}
#heatmap-tiles .grid-wrap {{ max-height: none !important; min-height: 0 !important; }}
"""

# gradio applies a slider's number box on blur only; Enter there should apply it too.
JS = """() => {
  document.addEventListener("keydown", (e) => {
    const box = e.target;
    if (e.key === "Enter" && box instanceof HTMLInputElement && box.type === "number") box.blur();
  }, true);
}"""
