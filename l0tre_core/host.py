"""The plugin host: loads plugins and keeps the named registries they fill.

Plugins come from the entry-point group ``l0tre`` (the built-in ones are declared there too, in
our own ``pyproject.toml``, exactly as a third party declares theirs) and from modules named with
``-p``. ``L0TRE_DISABLE_PLUGIN_AUTOLOAD=1`` skips the entry points; ``-p no:NAME`` blocks one.
"""

from __future__ import annotations

import importlib
import importlib.metadata
import os
import sys
from dataclasses import dataclass, field
from typing import Any, Iterable

import pluggy

from l0tre_core import contracts, hookspecs
from l0tre_core.errors import PluginError

GROUP = "l0tre"
DISABLE_AUTOLOAD_ENV = "L0TRE_DISABLE_PLUGIN_AUTOLOAD"
CORE_PLUGIN = "l0tre-core"
REGISTRY_HOOKS = {
    "data_formats": "l0tre_register_data_formats",
    "backends": "l0tre_register_backends",
    "array_kernels": "l0tre_register_array_kernels",
    "bound_methods": "l0tre_register_bound_methods",
}


@dataclass
class PluginHost:
    """A pluggy manager plus the registries filled through the ``register_*`` hooks."""

    pm: pluggy.PluginManager
    _registries: dict[str, dict[str, tuple[Any, str]]] = field(default_factory=dict)

    @property
    def hook(self) -> Any:
        return self.pm.hook

    def registry(self, kind: str) -> dict[str, Any]:
        """Name -> object for one kind (``data_formats``, ``backends``, ...), built on first use."""
        if kind not in self._registries:
            self._registries[kind] = self._collect(kind)
        return {name: obj for name, (obj, _) in self._registries[kind].items()}

    def owner(self, kind: str, name: str) -> str:
        self.registry(kind)
        return self._registries[kind][name][1]

    def _collect(self, kind: str) -> dict[str, tuple[Any, str]]:
        hookname = REGISTRY_HOOKS[kind]
        found: dict[str, tuple[Any, str]] = {}
        for impl in getattr(self.pm.hook, hookname).get_hookimpls():
            plugin_name = impl.plugin_name

            def register(obj: Any, _plugin: str = plugin_name) -> None:
                name = getattr(obj, "name", None)
                if not isinstance(name, str) or not name:
                    raise PluginError(f"plugin {_plugin!r} registered a {kind[:-1]} without a name")
                contracts.check(kind, obj, _plugin)
                if name in found:
                    raise PluginError(
                        f"{kind[:-1].replace('_', ' ')} {name!r} is registered by both "
                        f"{found[name][1]!r} and {_plugin!r}; uninstall or block one (-p no:NAME)"
                    )
                found[name] = (obj, _plugin)

            impl.function(register=register)
        return found

    def plugin_info(self) -> list[dict[str, Any]]:
        """Name, distribution, version, implemented hooks and registered objects of every plugin
        (building every registry checks every registered object against its contract)."""
        for kind in REGISTRY_HOOKS:
            self.registry(kind)
        dists = {id(plugin): dist for plugin, dist in self.pm.list_plugin_distinfo()}
        out = []
        for name, plugin in sorted(self.pm.list_name_plugin(), key=lambda kv: kv[0]):
            if plugin is None:
                continue
            dist = dists.get(id(plugin))
            hooks = sorted(h.name for h in (self.pm.get_hookcallers(plugin) or []))
            provides = sorted(f"{kind[:-1].replace('_', ' ')} {obj_name}" for kind in REGISTRY_HOOKS
                              for obj_name, (_, owner) in self._registries[kind].items() if owner == name)
            out.append(
                {
                    "name": name,
                    "module": getattr(plugin, "__name__", type(plugin).__name__),
                    "distribution": dist.metadata["name"] if dist is not None else None,
                    "version": dist.version if dist is not None else _module_version(plugin),
                    "hooks": hooks,
                    "provides": provides,
                }
            )
        return out


def _module_version(plugin: Any) -> str | None:
    return getattr(plugin, "__version__", None)


def create_host(
    plugins: Iterable[str] = (),
    *,
    autoload: bool | None = None,
    extra: Iterable[Any] = (),
) -> PluginHost:
    """A fresh plugin host: entry points (unless disabled), ``-p`` modules and ``extra`` objects.

    ``plugins`` holds ``-p`` values: a module name to import and register, or ``no:NAME`` to
    block the plugin registered under NAME.
    """
    pm = pluggy.PluginManager(GROUP)
    pm.add_hookspecs(hookspecs)
    plugins = list(plugins)
    for spec in plugins:
        if spec.startswith("no:"):
            if spec[3:] == CORE_PLUGIN:
                raise PluginError(f"the engine's own plugin {CORE_PLUGIN!r} cannot be blocked")
            pm.set_blocked(spec[3:])
    if autoload is None:
        autoload = os.environ.get(DISABLE_AUTOLOAD_ENV, "") not in ("1", "true", "yes")
    if autoload:
        try:
            pm.load_setuptools_entrypoints(GROUP)
        except Exception as exc:  # a broken third-party plugin must not look like our crash
            raise PluginError(f"a plugin of the entry-point group {GROUP!r} failed to load: {exc}") from None
    for spec in plugins:
        if spec.startswith("no:"):
            continue
        if pm.is_blocked(spec) or pm.has_plugin(spec):
            continue
        try:
            module = importlib.import_module(spec)
        except Exception as exc:
            raise PluginError(f"cannot load plugin module {spec!r} given with -p: {exc}") from None
        if pm.is_registered(module):  # already loaded from its entry point: -p is then a no-op
            continue
        _register(pm, module, spec)
    from l0tre_core import methods

    _register(pm, methods, CORE_PLUGIN)
    for obj in extra:
        _register(pm, obj, getattr(obj, "__name__", None))
    try:
        pm.check_pending()
    except pluggy.PluginValidationError as exc:
        raise PluginError(f"a plugin implements a hook l0tre does not know: {exc}") from None
    return PluginHost(pm)


def _register(pm: pluggy.PluginManager, obj: Any, name: str | None) -> None:
    try:
        pm.register(obj, name=name)
    except ValueError as exc:
        raise PluginError(f"plugin {name!r} is registered twice: {exc}") from None
    except pluggy.PluginValidationError as exc:
        raise PluginError(f"plugin {name!r} is not a valid l0tre plugin: {exc}") from None


def ensure_importable(path: str) -> None:
    """Let ``-p`` find modules in the current folder, as pytest's ``-p`` does with rootdir."""
    if path not in sys.path:
        sys.path.insert(0, path)
