"""Runs inside the side virtualenv: prints the public names of the official ``tinker`` package as JSON.

Output: ``{surface: [names]}`` where a surface is ``tinker`` (its ``__all__``), ``tinker.types``
(every public non-module name), or a class (``tinker.SamplingClient``, ...; its public attributes,
dataclass fields included). This file must not import tinkex.
"""

from __future__ import annotations

import dataclasses
import inspect
import json
import warnings

CLASSES = ["ServiceClient", "SamplingClient", "APIFuture", "SampleRequest", "SampleResponse", "SampledSequence",
           "SamplingParams", "ModelInput", "EncodedTextChunk", "TensorData", "TinkerError", "APIStatusError",
           "RequestFailedError"]


def _pydantic_names() -> set:
    try:
        import pydantic
    except ImportError:
        return set()
    return set(dir(pydantic.BaseModel)) | {"model_fields", "model_computed_fields", "model_config"}


def _members(cls: type) -> list:
    """Public attributes of ``cls``, without what every pydantic model or exception has."""
    names = {name for name in dir(cls) if not name.startswith("_")} - _pydantic_names()
    if dataclasses.is_dataclass(cls):
        names |= {field.name for field in dataclasses.fields(cls) if not field.name.startswith("_")}
    names |= {name for name in getattr(cls, "model_fields", {}) if not name.startswith("_")}
    names |= {name for name in getattr(cls, "__annotations__", {}) if not name.startswith("_")}
    return sorted(names - set(dir(BaseException)) if issubclass(cls, BaseException) else names)


def main() -> None:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        import tinker
        import tinker.types as types
    surfaces = {
        "tinker": sorted(tinker.__all__),
        "tinker.types": sorted(name for name in dir(types) if not name.startswith("_") and name != "annotations"
                               and not inspect.ismodule(getattr(types, name))),
    }
    for name in CLASSES:
        surfaces[f"tinker.{name}"] = _members(getattr(tinker, name))
    print(json.dumps({"version": tinker.__version__, "surfaces": surfaces}))


if __name__ == "__main__":
    main()
