"""Print the pinned requirements of pyproject.toml, one per line, for pip -r.

The project is not an installable package (two top-level apps), so the virtual
environment installs exactly the pinned dependencies and nothing else.
"""

import argparse
import pathlib
import tomllib

parser = argparse.ArgumentParser(description=__doc__)
parser.add_argument("--extra", action="append", default=[], help="optional group to add")
args = parser.parse_args()
project = tomllib.loads(pathlib.Path("pyproject.toml").read_text())["project"]
requirements = list(project["dependencies"])
for extra in args.extra:
    requirements += project["optional-dependencies"][extra]
print("\n".join(requirements))
