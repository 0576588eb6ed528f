"""clap-edge: CLAP heads on frozen open_clip models, fused, exported and run on the edge.

Importing the package is cheap on purpose: torch and open_clip are imported by the
modules that need them (``clap_edge.models``, ``clap_edge.head``, ...), never here,
so the runtime works on a device that has neither.
"""

__version__ = "0.2.0"

from clap_edge.core.errors import ClapEdgeError  # noqa: E402  (stdlib-only)

__all__ = ["__version__", "ClapEdgeError"]
