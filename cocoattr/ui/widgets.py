"""What every tab shares: user errors shown on the page (an API error, or a tab's one-line note),
the image input, the UI-only event flag."""

from __future__ import annotations

import re
from collections.abc import Callable
from functools import wraps
from typing import Any

import gradio as gr

from cocoattr.errors import UserError

UI = {"api_visibility": "undocumented"}  # the UI's own events stay out of view_api()


def _user_message(e: UserError) -> str:
    """gr.Error renders HTML; file names come from users, so neutralise markup (keep '->' readable)."""
    return str(e).replace("&", "&amp;").replace("<", "&lt;")


def error_note(e: UserError) -> str:
    """A UserError as the one bold line a tab shows in place of its results (markup neutralised,
    Markdown's too: file names come from users)."""
    text = re.sub(r"([\\`*_\[\]])", r"\\\1", _user_message(e))
    return f"**Cannot use this photo: {text}**"


def user_errors(fn: Callable) -> Callable:
    """Turn a `UserError` into a `gr.Error` the page shows (no traceback); the app keeps serving."""

    @wraps(fn)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        try:
            return fn(*args, **kwargs)
        except UserError as e:
            raise gr.Error(_user_message(e), title="Cannot do that", print_exception=False) from None

    return wrapper


def image_input(**kwargs: Any) -> gr.Image:
    """A stock gr.Image whose upload reaches our code as an unopened file path.

    gr.Image opens the upload before our function runs (and decodes it for some modes), so a
    PDF renamed .jpg or a 20000x20000 PNG would fail inside gradio with an internal-looking
    message. Replacing this instance's `preprocess` lets `cocoattr.images.load_image` alone
    decide, with its readable UserErrors. (A subclass would do too, but gradio then writes an
    app.pyi stub next to this file and needs a custom frontend id.) The frontend and the API
    type (filepath for gradio_client) stay those of gr.Image.
    """
    component = gr.Image(type="filepath", image_mode=None, **kwargs)
    stock = component.preprocess

    def preprocess(payload: Any) -> str | None:
        if payload is None:
            return None
        if getattr(payload, "path", None):
            return str(payload.path)
        try:  # a data: URL (no file yet): let gradio write it to its cache
            return stock(payload)
        except Exception as e:  # gradio raises several types for undecodable data
            raise gr.Error(f"not an image ({type(e).__name__})", print_exception=False) from None

    component.preprocess = preprocess  # type: ignore[method-assign]
    return component
