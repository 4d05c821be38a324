"""What the deployment files may refer to: the project's paths, the app's URL rules, the
settings' environment variables, and a small Dockerfile parser."""

from __future__ import annotations

import functools
import re
import shlex
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]

# Environment variables read by third-party software inside the containers.
THIRD_PARTY_ENV = {
    "PATH",
    "PYTHONDONTWRITEBYTECODE",
    "PYTHONUNBUFFERED",
    "PIP_NO_CACHE_DIR",
    "PIP_DISABLE_PIP_VERSION_CHECK",
    "TF_CPP_MIN_LOG_LEVEL",
    "CUDA_VISIBLE_DEVICES",
    "PROMETHEUS_MULTIPROC_DIR",  # prometheus_client; set and emptied by the entrypoint
    "HOME",  # the image user's home: caches of libraries that know no other variable
    "XDG_CACHE_HOME",  # fontconfig and other XDG-minded caches
    "MPLCONFIGDIR",  # matplotlib's config and font cache (the trainer's plots)
    "KERAS_HOME",  # keras.json and Keras' cache
}


def settings_env() -> set[str]:
    """LAYERSCOPE_* variables service/settings.py reads."""
    from service.settings import Settings

    return {f"LAYERSCOPE_{name.upper()}" for name in Settings.model_fields}


def env_read_by_project(name: str) -> bool:
    """A LAYERSCOPE_* variable is a settings field or named in the training code or a
    project script; anything else must be a known third-party variable."""
    if name in THIRD_PARTY_ENV:
        return True
    if not name.startswith("LAYERSCOPE_"):
        return False
    if name in settings_env():
        return True
    sources = [*ROOT.glob("training/*.py"), ROOT / "deploy" / "train-missing.sh"]
    return any(name in path.read_text() for path in sources)


@functools.cache
def url_rules(tmp_repo: str) -> frozenset[str]:
    """Every URL rule of the real app (an empty repository, nothing loaded)."""
    from service import create_app

    app = create_app(
        {"model_repository": tmp_repo, "load_in_background": False, "poll_interval": 0}
    )
    return frozenset(rule.rule for rule in app.url_map.iter_rules())


def dockerfile_instructions(path: Path) -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) with continuation lines joined and comments dropped."""
    out: list[tuple[str, str]] = []
    pending = ""
    for raw in path.read_text().splitlines():
        line = raw.strip()
        if not pending and (not line or line.startswith("#")):
            continue
        if line.endswith("\\"):
            pending += line[:-1] + " "
            continue
        line = pending + line
        pending = ""
        keyword, _, rest = line.partition(" ")
        out.append((keyword.upper(), rest.strip()))
    return out


def dockerfile_stages(path: Path) -> dict[str, list[tuple[str, str]]]:
    """Instructions per build stage (``FROM ... AS name``), in file order; a stage's
    instructions start with its FROM. The global ARGs before the first FROM are "ARG"."""
    stages: dict[str, list[tuple[str, str]]] = {"ARG": []}
    current = "ARG"
    for keyword, args in dockerfile_instructions(path):
        if keyword == "FROM":
            words = args.split()
            current = words[2] if len(words) == 3 and words[1].upper() == "AS" else words[0]
            stages[current] = []
        stages[current].append((keyword, args))
    return stages


def copy_sources(args: str) -> list[str]:
    """Source paths of a COPY/ADD (flags dropped; JSON form or shell words)."""
    words = shlex.split(args)
    words = [w for w in words if not w.startswith("--")]
    return words[:-1]


def env_pairs(args: str) -> dict[str, str]:
    """ENV k=v k2=v2 (the legacy 'ENV k v' form too)."""
    words = shlex.split(args)
    if words and "=" not in words[0]:
        return {words[0]: " ".join(words[1:])}
    return dict(w.split("=", 1) for w in words)


URL_IN_TEXT = re.compile(r"https?://[^/'\"\s]+(/[A-Za-z0-9_./-]*)")
