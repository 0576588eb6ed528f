"""Package discovery (the metadata is in pyproject.toml).

``export/`` and ``runtime/`` install as ``clap_edge.export`` and ``clap_edge.runtime``; setuptools'
static ``packages.find`` cannot discover sub-packages under such a mapping, so they are found here.
"""

from setuptools import find_packages, setup


def mapped(prefix: str, folder: str) -> list[str]:
    return [prefix] + [f"{prefix}.{name}" for name in find_packages(folder)]


setup(packages=find_packages(include=["clap_edge", "clap_edge.*"])
      + mapped("clap_edge.export", "export") + mapped("clap_edge.runtime", "runtime"))
