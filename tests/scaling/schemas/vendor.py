"""Vendor a CustomResourceDefinition's openAPIV3Schema for the offline manifest checks.

    python tests/scaling/schemas/vendor.py CRD.yaml OUT.json --source REPO@TAG:PATH

Writes the schema of the CRD's storage version as compact JSON with every schema's
``description`` dropped (the bulk of the bytes; no validation rule lives there) and the
source recorded under ``x-vendored``. The files here come from:

* kserve/kserve v0.20.0 (1fb781055dd1567164358233e1125142ca6ef1fe), config/crd/full/
  serving.kserve.io_clusterservingruntimes.yaml and serving.kserve.io_inferenceservices.yaml
* prometheus-operator/prometheus-operator v0.89.0, example/prometheus-operator-crd/
  monitoring.coreos.com_podmonitors.yaml
"""

from __future__ import annotations

import argparse
import hashlib
import json
from pathlib import Path

import yaml


def strip(schema):
    """Drop the prose of every schema node (keep property *names* called description)."""
    if isinstance(schema, list):
        return [strip(s) for s in schema]
    if not isinstance(schema, dict):
        return schema
    out = {}
    for key, value in schema.items():
        if key == "description" and isinstance(value, str):
            continue
        if key in ("properties", "patternProperties", "definitions"):
            out[key] = {name: strip(sub) for name, sub in value.items()}
        else:
            out[key] = strip(value)
    return out


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("crd")
    parser.add_argument("out")
    parser.add_argument("--source", required=True)
    args = parser.parse_args()
    raw = Path(args.crd).read_bytes()
    crd = yaml.safe_load(raw)
    version = next(v for v in crd["spec"]["versions"] if v.get("storage"))
    schema = strip(version["schema"]["openAPIV3Schema"])
    schema["x-vendored"] = {
        "source": args.source,
        "sha256": hashlib.sha256(raw).hexdigest(),
        "group": crd["spec"]["group"],
        "kind": crd["spec"]["names"]["kind"],
        "version": version["name"],
        "note": "descriptions dropped (tests/scaling/schemas/vendor.py)",
    }
    Path(args.out).write_text(json.dumps(schema, separators=(",", ":"), sort_keys=True) + "\n")


if __name__ == "__main__":
    main()
