"""The torch backend: loader (opens the model) and runner (activate / infer / deactivate)."""
