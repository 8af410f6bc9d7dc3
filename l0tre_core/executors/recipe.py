"""What a worker process needs to rebuild the run's model: the model file's bytes, the card as
the driver resolved it, the backend and device, and the plugins the driver's host had.

A ``ClassifierRecipe`` is small to describe and pickles with the model's bytes in it: put it (or
the task holding it) into Ray's object store once, and every worker reads it from there, never
once per input."""

from __future__ import annotations

import dataclasses
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from types import ModuleType
from typing import Any

from l0tre_core.contracts import BackendOptions
from l0tre_core.errors import UsageError


@dataclass
class HostRecipe:
    """The driver's plugins, by name: entry points (when it autoloaded them), ``-p`` modules,
    blocked names, and plugin objects that are not modules (sent pickled)."""

    autoload: bool = True
    modules: list[str] = field(default_factory=list)
    blocked: list[str] = field(default_factory=list)
    objects: list[Any] = field(default_factory=list)

    @classmethod
    def of(cls, host: Any) -> "HostRecipe":
        from l0tre_core.host import CORE_PLUGIN

        from_dists = {id(plugin) for plugin, _ in host.pm.list_plugin_distinfo()}
        recipe = cls(autoload=bool(from_dists))
        for name, plugin in host.pm.list_name_plugin():
            if plugin is None:
                recipe.blocked.append(name)
            elif name == CORE_PLUGIN or id(plugin) in from_dists:
                continue
            elif isinstance(plugin, ModuleType):
                recipe.modules.append(plugin.__name__)
            else:
                recipe.objects.append(plugin)
        return recipe

    def build(self) -> Any:
        from l0tre_core.host import create_host

        return create_host([*self.modules, *(f"no:{name}" for name in self.blocked)], autoload=self.autoload,
                           extra=self.objects)


@dataclass
class ClassifierRecipe:
    """Rebuilds the driver's ``Classifier`` in a worker: same bytes, card, geometry and batch size;
    its own inference session (with the worker's thread count)."""

    model_bytes: bytes
    file_name: str
    template: Any  # the driver's Classifier without its runtime and graph
    backend: str
    device: str
    input_name: str
    output_name: str
    host: HostRecipe

    @classmethod
    def of(cls, classifier: Any, host: Any, device: str = "auto") -> "ClassifierRecipe":
        """The recipe of a classifier loaded from a file (``load_model``)."""
        if classifier.path is None:
            raise UsageError("`executor` ray needs a model loaded from a file (this classifier has no path)",
                             field="executor")
        path = Path(classifier.path)
        onnx_model = classifier.onnx_model
        if onnx_model is not None and _external(onnx_model):
            raise UsageError(f"`executor` ray sends the model file to the workers, but {path.name} keeps its weights "
                             "in external data files", hint="save the model as one file", field="executor")
        runtime = classifier.runtime
        return cls(
            model_bytes=path.read_bytes(),
            file_name=path.name,
            template=dataclasses.replace(classifier, runtime=None, onnx_model=None, evaluations=0),
            backend=_backend_name(host, runtime),
            device=device,
            input_name=runtime.input_name,
            output_name=runtime.output_name,
            host=HostRecipe.of(host),
        )

    def open(self, threads: int = 0) -> tuple[Any, Any]:
        """(plugin host, classifier) in this process; ``threads``: the session's intra-op threads."""
        host = self.host.build()
        backend = host.registry("backends")[self.backend]
        options = BackendOptions(device=self.device, input_name=self.input_name, output_name=self.output_name,
                                 threads=threads)
        with tempfile.TemporaryDirectory(prefix="l0tre-worker-") as folder:
            path = Path(folder) / self.file_name
            path.write_bytes(self.model_bytes)
            runtime = backend.load(path, options)
        classifier = dataclasses.replace(self.template, runtime=runtime, onnx_model=getattr(runtime, "onnx_model", None),
                                         evaluations=0)
        return host, classifier


def _backend_name(host: Any, runtime: Any) -> str:
    """The registered backend whose package made ``runtime`` (the CLI always uses onnxruntime)."""
    package = type(runtime).__module__.split(".")[0]
    for name, backend in host.registry("backends").items():
        if type(backend).__module__.split(".")[0] == package:
            return name
    return "onnxruntime"


def _external(onnx_model: Any) -> bool:
    from onnx.external_data_helper import uses_external_data

    return any(uses_external_data(t) for t in onnx_model.graph.initializer)
