"""The image and the manifests run the Ray, Python and torch that pyproject.toml pins.
The pins are read from pyproject.toml, never repeated here."""

from __future__ import annotations

import re

from ..pins import dockerfiles, parse_dockerfile, read_pins
from ..violation import Violation
from ..walk import ray_cluster_specs

RAY_IMAGE = re.compile(
    r"^(?:docker\.io/)?rayproject/ray(?:-ml)?:(?P<version>\d+\.\d+\.\d+)"
    r"(?:-py(?P<python>\d)(?P<minor>\d+))?(?:-(?P<variant>[\w.]+))?$"
)


def _ray_base(path):
    """(line, match) of the rayproject/ray FROM in a Dockerfile, or None."""
    for line, image in parse_dockerfile(path).froms:
        if m := RAY_IMAGE.match(image):
            return line, m
    return None


def ray_version_matches_pin(bundle):
    """infra/Dockerfile builds on an official Ray GPU image whose Ray (and Python) version
    pyproject.toml allows, and every rayVersion field agrees."""
    pins = read_pins(bundle.root)
    pin = pins.spec("ray")
    main = bundle.root / "infra" / "Dockerfile"
    if not main.is_file():
        yield Violation(bundle.rel(main), "file", "missing: the raylg image definition")
    elif (base := _ray_base(main)) is None:
        yield Violation(bundle.rel(main), "FROM", "does not build on an official rayproject/ray image")
    else:
        line, m = base
        where = f"line {line} FROM"
        if pins.allows("ray", m["version"]) is False:
            yield Violation(bundle.rel(main), where,
                            f"Ray {m['version']} is outside pyproject.toml's pin ray{pin}")
        if m["python"]:
            python = f"{m['python']}.{m['minor']}"
            if not pins.requires_python.contains(python):
                yield Violation(bundle.rel(main), where, f"Python {python} is outside "
                                f"requires-python {pins.requires_python}")
        else:
            yield Violation(bundle.rel(main), where, "the tag names no Python version (e.g. -py311)")
        variant = m["variant"] or ""
        if "gpu" not in variant and not variant.startswith("cu"):
            yield Violation(bundle.rel(main), where, "is not a GPU (CUDA) image: use the -gpu tag")
    for res in bundle.of_kind("RayCluster", "RayJob"):
        for path, spec in ray_cluster_specs(res):
            version = spec.get("rayVersion")
            if version is None:
                yield bundle.at(res, (*path, "rayVersion"), f"must be set (pyproject pins ray{pin})")
            elif pins.allows("ray", str(version)) is False:
                yield bundle.at(res, (*path, "rayVersion"),
                                f"{version} is outside pyproject.toml's pin ray{pin}")


def dockerfile_pins_match_pyproject(bundle):
    """Packages pinned in infra/ Dockerfiles (torch, torchvision, mlflow, ...) are inside
    pyproject.toml's ranges, and the raylg image pins torch and torchvision."""
    pins = read_pins(bundle.root)
    for path in dockerfiles(bundle.root):
        parsed = parse_dockerfile(path)
        for line, package, version in parsed.pip_pins:
            if pins.allows(package, version) is False:
                yield Violation(bundle.rel(path), f"line {line} RUN",
                                f"{package}=={version} is outside pyproject.toml's {package}{pins.spec(package)}")
        if _ray_base(path) is not None:
            pinned = {package.lower() for _line, package, _v in parsed.pip_pins}
            for package in ("torch", "torchvision"):
                if package not in pinned:
                    yield Violation(bundle.rel(path), "RUN",
                                    f"{package} is not pinned (pip install {package}==VERSION)")
