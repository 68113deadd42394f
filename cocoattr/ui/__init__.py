"""The Gradio app's tabs and shared widgets (`app.py` composes them); the answers come from `serving`."""
