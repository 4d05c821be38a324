"""Print pinned requirements of pyproject.toml, one per line, for pip -r.

The project is not an installable package (two top-level apps), so each environment
installs exactly a set of pinned dependencies and nothing else:

    python scripts/requirements.py                  # the local environment: the service's
                                                    # dependencies, the full TensorFlow wheel
                                                    # and the training stack
    python scripts/requirements.py --extra test     # ... and the test tools (make install)
    python scripts/requirements.py --serving        # the serving image: the service's
                                                    # dependencies and tensorflow-cpu only
    python scripts/requirements.py --serving --extra train   # the trainer image
    python scripts/requirements.py --serving --no-deps-set   # what the images install with
                                                    # pip --no-deps (it requires the full
                                                    # tensorflow wheel, not tensorflow-cpu)
"""

import argparse
import pathlib
import tomllib

# extras of the local environment (make install, make run)
LOCAL = ["tensorflow", "tensorflow-serving-api", "train"]
SERVING = ["tensorflow-cpu"]  # extras of the serving image (Dockerfile)
# extras the images install with --no-deps: their requirement `tensorflow` is tensorflow-cpu
# there, the rest is pinned in the dependencies
SERVING_NO_DEPS = ["tensorflow-serving-api"]

parser = argparse.ArgumentParser(
    description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
)
parser.add_argument("--extra", action="append", default=[], help="optional group to add")
parser.add_argument(
    "--serving",
    action="store_true",
    help=f"start from the serving image's set ({', '.join(SERVING)}) instead of the "
    f"local environment's ({', '.join(LOCAL)})",
)
parser.add_argument(
    "--no-deps-set",
    action="store_true",
    help=f"only the extras to install with pip --no-deps ({', '.join(SERVING_NO_DEPS)})",
)
args = parser.parse_args()
project = tomllib.loads(
    (pathlib.Path(__file__).resolve().parents[1] / "pyproject.toml").read_text()
)["project"]
if args.no_deps_set:
    requirements, extras = [], SERVING_NO_DEPS
else:
    requirements = list(project["dependencies"])
    extras = (SERVING if args.serving else LOCAL) + args.extra
for extra in extras:
    for requirement in project["optional-dependencies"][extra]:
        if requirement not in requirements:
            requirements.append(requirement)
print("\n".join(requirements))
