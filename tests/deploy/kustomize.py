"""Rendering deploy/k8s overlays: ``kubectl kustomize`` where it is installed, else a
minimal renderer for the part of kustomize the overlays use.

That part: ``resources`` (files and folders with a kustomization), ``namespace``,
``labels`` (metadata only), ``configMapGenerator`` from files (``behavior: replace``
included; the name gets a content-hash suffix and the Deployments' references follow it)
and ``patches`` of JSON-patch operations on targets chosen by kind and label selector.
tests/deploy/test_k8s.py checks the two renderers agree where kubectl is present.
"""
from __future__ import annotations

import copy
import hashlib
import shutil
import subprocess
from pathlib import Path

import yaml


def render(folder: Path) -> list[dict]:
    kubectl = shutil.which("kubectl")
    if kubectl:
        return render_kubectl(folder, kubectl)
    return render_minimal(folder)


def render_kubectl(folder: Path, kubectl: str = "kubectl") -> list[dict]:
    text = subprocess.run([kubectl, "kustomize", str(folder)], check=True,
                          capture_output=True, text=True, timeout=120).stdout
    return [doc for doc in yaml.safe_load_all(text) if doc]


def render_minimal(folder: Path) -> list[dict]:
    objects, generated = _build(folder)
    names = {}
    for obj in objects:
        if obj["kind"] == "ConfigMap" and obj["metadata"]["name"] in generated:
            digest = hashlib.sha256(yaml.safe_dump(obj["data"], sort_keys=True).encode()).hexdigest()
            names[obj["metadata"]["name"]] = obj["metadata"]["name"] = f"{obj['metadata']['name']}-{digest[:10]}"
    for obj in objects:
        _rename_config_maps(obj, names)
    return objects


def _build(folder: Path) -> tuple[list[dict], set[str]]:
    """The folder's objects, transformed, and the names of the config maps it generated."""
    spec = yaml.safe_load((folder / "kustomization.yaml").read_text())
    objects: list[dict] = []
    generated: set[str] = set()
    for entry in spec.get("resources", []):
        path = folder / entry
        if path.is_dir():
            more, names = _build(path)
            objects += more
            generated |= names
        else:
            objects += [doc for doc in yaml.safe_load_all(path.read_text()) if doc]
    for generator in spec.get("configMapGenerator", []):
        name = generator["name"]
        if generator.get("behavior", "create") == "replace":
            objects = [o for o in objects if not (o["kind"] == "ConfigMap" and o["metadata"]["name"] == name)]
        data = {Path(f).name: (folder / f).read_text() for f in generator.get("files", [])}
        objects.append({"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": name}, "data": data})
        generated.add(name)
    for patch in spec.get("patches", []):
        operations = yaml.safe_load((folder / patch["path"]).read_text())
        for obj in objects:
            if _targeted(obj, patch.get("target", {})):
                for op in operations:
                    _apply(obj, op)
    for group in spec.get("labels", []):
        for obj in objects:
            obj.setdefault("metadata", {}).setdefault("labels", {}).update(group["pairs"])
    if "namespace" in spec:
        for obj in objects:
            if obj["kind"] != "Namespace":
                obj["metadata"]["namespace"] = spec["namespace"]
    return objects, generated


def _targeted(obj: dict, target: dict) -> bool:
    if "kind" in target and obj["kind"] != target["kind"]:
        return False
    selector = target.get("labelSelector")
    if selector:
        labels = obj.get("metadata", {}).get("labels", {})
        wanted = dict(pair.split("=", 1) for pair in selector.split(","))
        return all(labels.get(k) == v for k, v in wanted.items())
    return True


def _apply(obj: dict, op: dict) -> None:
    *parents, last = [part.replace("~1", "/").replace("~0", "~") for part in op["path"].split("/")[1:]]
    node = obj
    for part in parents:
        node = node[int(part)] if isinstance(node, list) else node.setdefault(part, {})
    if op["op"] in ("add", "replace"):
        value = copy.deepcopy(op["value"])
        if isinstance(node, list):
            node.insert(len(node) if last == "-" else int(last), value)
        else:
            node[last] = value
    elif op["op"] == "remove":
        del node[int(last) if isinstance(node, list) else last]
    else:
        raise ValueError(f"unsupported patch operation {op['op']}")


def _rename_config_maps(obj: dict, names: dict[str, str]) -> None:
    if obj["kind"] != "Deployment":
        return
    for volume in obj["spec"]["template"]["spec"].get("volumes", []):
        if "configMap" in volume and volume["configMap"]["name"] in names:
            volume["configMap"]["name"] = names[volume["configMap"]["name"]]
