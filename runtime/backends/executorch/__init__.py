"""The executorch backend: loader (opens the .pte) and runner (activate / infer / deactivate)."""
