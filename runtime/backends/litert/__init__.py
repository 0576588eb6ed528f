"""The litert backend: loader (opens the .tflite) and runner (activate / infer / deactivate)."""
