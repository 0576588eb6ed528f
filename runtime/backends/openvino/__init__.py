"""The openvino backend: loader (opens the model) and runner (activate / infer / deactivate)."""
