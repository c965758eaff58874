"""Package list for setuptools (everything else is in pyproject.toml).

`qnet` and all its subpackages are found automatically; `daemons/` is installed as the package
`qnet.daemons` (mapped in pyproject.toml), so there is no top-level `daemons` module.
"""

from setuptools import find_packages, setup

setup(packages=[*find_packages(include=["qnet", "qnet.*"]), "qnet.daemons"])
