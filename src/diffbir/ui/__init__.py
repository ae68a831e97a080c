"""The web UI: the page (gradio) and the work behind it, a thin adapter over the run loop."""
