"""Every image is pinned by tag (or digest): no implicit or explicit :latest."""

from __future__ import annotations

from ..pins import dockerfiles, parse_dockerfile
from ..violation import Violation
from ..walk import containers, get, ray_cluster_specs


def image_problem(image) -> str | None:
    """Why IMAGE is not pinned, or None if it is."""
    if not isinstance(image, str) or not image.strip():
        return "has no image"
    if "$" in image:
        return f"{image!r} has an unresolved variable"
    if "@sha256:" in image:
        return None
    last = image.rsplit("/", 1)[-1]
    if ":" not in last:
        return f"{image!r} has no tag (it would pull :latest)"
    if last.rsplit(":", 1)[1] == "latest":
        return f"{image!r} uses the moving tag :latest"
    return None


def images_pinned(bundle):
    """Container images in the manifests and FROM images in infra/ Dockerfiles are pinned by tag."""
    for res in bundle.objects:
        for path, container, _role in containers(res):
            problem = image_problem(container.get("image"))
            if problem:
                yield bundle.at(res, (*path, "image"), problem)
        for path, spec in ray_cluster_specs(res):
            image = get(spec, ("autoscalerOptions", "image"))
            if image is not None and (problem := image_problem(image)):
                yield bundle.at(res, (*path, "autoscalerOptions", "image"), problem)
    for dockerfile in dockerfiles(bundle.root):
        parsed = parse_dockerfile(dockerfile)
        stages: set[str] = set()
        for line, image in parsed.froms:
            text = dockerfile.read_text().splitlines()[line - 1]
            if " as " in text.lower():
                stages.add(text.split()[-1].lower())
            if image.lower() in stages or image == "scratch":
                continue
            if problem := image_problem(image):
                yield Violation(bundle.rel(dockerfile), f"line {line} FROM", problem)
