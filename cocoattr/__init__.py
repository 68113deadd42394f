"""cocoattr: which visual attributes a photo shows, where, and which images show them."""

__version__ = "0.1.0"
