"""JSON model configs that clap-edge registers with open_clip (the way open_clip ships its own)."""
