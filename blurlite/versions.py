"""The versions an artifact was written with, and whether this installation can read it."""
from __future__ import annotations

from importlib.metadata import PackageNotFoundError, version

__all__ = ["stack_versions", "check_versions", "IncompatibleArtifactError"]

_PACKAGES = ("blurlite", "fastai", "transformers", "torch")


class IncompatibleArtifactError(RuntimeError):
    "An artifact written by versions this installation cannot read faithfully."


def stack_versions() -> dict[str, str]:
    "The installed versions of blurlite, fastai, transformers and torch."
    found = {}
    for name in _PACKAGES:
        try:
            found[name] = version(name)
        except PackageNotFoundError:
            found[name] = "unknown"
    return found


def _release(v: str, parts: int) -> tuple:
    "The first `parts` numbers of a version string ('2.14.1+cu130' -> (2, 14) for parts=2)."
    numbers = []
    for piece in v.split("+")[0].split(".")[:parts]:
        digits = "".join(c for c in piece if c.isdigit())
        numbers.append(int(digits) if digits else 0)
    return tuple(numbers)


def check_versions(saved: dict, what: str, pickled: bool) -> None:
    """Raise `IncompatibleArtifactError` if `saved` versions can't be read by this installation.

    Rules: blurlite must not be newer (major.minor) than the one installed; transformers must have the same major
    version. A pickle (`pickled=True`, fastai's `export`) also needs fastai's major.minor and torch's major version,
    since it stores their classes.
    """
    installed = stack_versions()
    rules = [("blurlite", 2, "newer"), ("transformers", 1, "same")]
    if pickled:
        rules += [("fastai", 2, "same"), ("torch", 1, "same")]
    for name, parts, rule in rules:
        if name not in saved or "unknown" in (saved[name], installed[name]):
            continue
        old, new = _release(saved[name], parts), _release(installed[name], parts)
        if (rule == "newer" and old > new) or (rule == "same" and old != new):
            raise IncompatibleArtifactError(
                f"{what} was written with {name} {saved[name]}, but {name} {installed[name]} is installed: "
                f"install {name}=={saved[name]} to load it" + ("" if pickled else ", or save it again"))
