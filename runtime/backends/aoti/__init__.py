"""The AOTInductor backend: loader (finds and loads the engine package) and runner."""
