"""The one contract every analysis result follows.

``info`` (provenance: see ``trilens.provenance``), ``to_frame()`` (tidy pandas), ``figure()`` (plotly, built by
``trilens.viz``), ``save(path)`` (a folder: ``result.json`` + ``tensors.safetensors``, written atomically, never
pickle), ``Class.load(path)`` and ``trilens.load_result(path)`` (the right class from what is on disk),
``_repr_html_`` (a short summary and the figure, in a notebook). Results written by trilens 0.1.0, before this
contract, still load.
"""

from __future__ import annotations

import html
import importlib
import json
import os
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file, save_file

from .atomic import atomic_dir
from .errors import StoreError, TrilensError
from .version import __version__

FORMAT_VERSION = 2  # 1: each class's own files (trilens 0.1.0); 2: this contract
RESULT_FILE, TENSOR_FILE, FIGURE_FILE = "result.json", "tensors.safetensors", "figure.html"

_REGISTRY: dict[str, type[Result]] = {}
# The packages whose modules define trilens's own result classes (each registers its classes on import): importing
# them finds a class saved without its module (results written before the module was recorded, trilens <= 0.2.0).
_RESULT_PACKAGES = ("capture", "lens", "probes", "attention", "attribution", "features", "patching")
# The JSON files of results saved by trilens 0.1.0; each names its class in "format" ("trilens.LensResult/1").
_LEGACY_FILES = ("lens.json", "decoder_lens.json", "probe.json", "cache.json", "generation.json")


def register_result(cls: type[Result]) -> type[Result]:
    """Class decorator: make ``cls`` known to ``load_result`` under its class name."""
    _REGISTRY[cls.__name__] = cls
    return cls


def _import_result_packages() -> None:
    for package in _RESULT_PACKAGES:
        importlib.import_module(f"trilens.{package}")


def list_results() -> list[str]:
    """The result classes ``load_result`` can read (trilens's own, and any registered since)."""
    _import_result_packages()
    return sorted(_REGISTRY)


def _result_class(name: str, module: str | None = None) -> type[Result]:
    """The class saved as ``name``: imported from the ``module`` the file records where it is trilens's own (a user's
    class must be registered by importing its module first)."""
    if name not in _REGISTRY and module is not None and module.split(".")[0] == "trilens":
        try:
            importlib.import_module(module)
        except ImportError:  # moved or renamed since: the packages below still find it by name
            pass
    if name not in _REGISTRY:
        _import_result_packages()
    if name not in _REGISTRY:
        raise StoreError(f"no result class {name!r} is known" + (f" (it was saved from module {module})" if module else "")
                         + f"; known: {', '.join(list_results())}. Import the module that defines it (and decorates "
                         "it with @register_result) first.")
    return _REGISTRY[name]


def load_result(path: str | os.PathLike) -> Result:
    """Read any saved trilens result; the class comes from what is on disk."""
    path = Path(path)
    doc_file = path / RESULT_FILE
    if doc_file.exists():
        try:
            doc = json.loads(doc_file.read_text())
            name = doc["format"].removeprefix("trilens.")
            version = int(doc.get("version", FORMAT_VERSION))
        except (OSError, ValueError, KeyError, TypeError, AttributeError) as err:
            raise StoreError(f"{doc_file} is not a trilens result file ({err}).") from err
        if version > FORMAT_VERSION:
            raise StoreError(f"{path} was saved by trilens {doc.get('trilens', '?')} (format {version}); this is trilens "
                             f"{__version__} (format {FORMAT_VERSION}): upgrade trilens to read it.")
        cls = _result_class(name, doc.get("module"))
        try:
            tensors = load_file(path / TENSOR_FILE) if (path / TENSOR_FILE).exists() else {}
        except (OSError, ValueError) as err:
            raise StoreError(f"{path / TENSOR_FILE} cannot be read ({err}).") from err
        try:
            return cls._from_state(doc.get("data", {}), tensors, doc.get("info", {}))
        except (KeyError, TypeError, ValueError) as err:
            raise StoreError(f"{path} holds a damaged {name} ({type(err).__name__}: {err}).") from err
    for file in _LEGACY_FILES:
        if (path / file).exists():
            return _result_class(_legacy_format(path / file))._from_legacy(path)
    if not path.exists():
        raise StoreError(f"{path} does not exist: pass the folder a result was saved to.")
    raise StoreError(f"{path} holds no saved trilens result (no {RESULT_FILE}); results are saved with result.save(path).")


def _legacy_format(file: Path) -> str:
    try:
        name = str(json.loads(file.read_text()).get("format", "")).removeprefix("trilens.").split("/")[0]
    except (OSError, ValueError, AttributeError) as err:
        raise StoreError(f"{file} is not a trilens result file ({err}).") from err
    if name == "TunedLens":
        raise StoreError(f"{file.parent} holds a tuned lens, a model add-on rather than a result: load it with "
                         "trilens.lens.TunedLens.load(path, model).")
    return name


class Result:
    """Base class of every analysis result: subclasses give ``to_frame``, ``figure`` and their state."""

    info: dict[str, Any]
    # -- what subclasses provide -------------------------------------------------------------
    def to_frame(self):  # pragma: no cover - every subclass overrides
        """Tidy pandas: one row per observation."""
        raise NotImplementedError

    def figure(self, *args: Any, **kwargs: Any):  # pragma: no cover - every subclass overrides
        """The result's main plotly figure."""
        raise NotImplementedError

    def _state(self) -> tuple[dict[str, Any], dict[str, torch.Tensor]]:  # pragma: no cover
        """(JSON-ready data, named tensors) that ``_from_state`` rebuilds the result from."""
        raise NotImplementedError

    @classmethod
    def _from_state(cls, data: dict[str, Any], tensors: dict[str, torch.Tensor], info: dict[str, Any]) -> Result:  # pragma: no cover
        raise NotImplementedError

    @classmethod
    def _from_legacy(cls, path: Path) -> Result:
        raise StoreError(f"{path} holds a {cls.__name__} in a format this trilens cannot read.")

    def summary(self) -> str:
        """One line saying what the result holds: its ``repr``, which every result class defines (the one name for
        the one-line summary)."""
        return repr(self)

    def table(self, *args: Any, **kwargs: Any):
        """The result's main aggregate table as pandas (per layer, per step, per intervention...): the one name
        every result with such a table uses; ``to_frame()`` stays the tidy table of every observation."""
        raise TrilensError(f"a {type(self).__name__} has no aggregate table; to_frame() holds its observations.")

    # -- the shared contract -----------------------------------------------------------------
    def save(self, path: str | os.PathLike, *, figure: bool = False) -> Path:
        """Write the result to folder ``path`` (``result.json``, ``tensors.safetensors``; ``figure.html`` with ``figure``).

        The folder is built beside ``path`` and renamed into place: an error leaves nothing half-written.
        """
        path = Path(path)
        if path.is_dir() and any(path.iterdir()) and not _holds_result(path):
            raise StoreError(f"{path} is a folder that holds no trilens result; saving there would replace it. "
                             "Choose a new or empty folder.")
        data, tensors = self._state()
        doc = {"format": f"trilens.{type(self).__name__}", "module": type(self).__module__, "version": FORMAT_VERSION,
               "trilens": __version__, "info": self.info, "data": data}
        text = json.dumps(doc)  # fails here, before anything is written, if something is not JSON
        with atomic_dir(path) as tmp:
            if tensors:
                save_file(_own_storage(tensors), tmp / TENSOR_FILE)
            (tmp / RESULT_FILE).write_text(text)
            if figure:
                from .viz import write_html

                write_html(self.figure(), tmp / FIGURE_FILE)
        return path

    @classmethod
    def load(cls, path: str | os.PathLike) -> Result:
        """Read a result of this class saved with ``save`` (or by trilens 0.1.0)."""
        result = load_result(path)
        if not isinstance(result, cls):
            raise StoreError(f"{path} holds a {type(result).__name__}, not a {cls.__name__}: use trilens.load_result(path).")
        return result

    def _table_html(self) -> str:
        """A small summary table for notebooks (subclasses: per-layer metrics, say); none by default."""
        return ""

    def _repr_html_(self) -> str:
        head = f"<p><b>{html.escape(self.summary())}</b></p>" + self._table_html()
        try:
            return head + self.figure()._repr_html_()
        except ImportError:  # plotly is an optional extra
            return head + "<p>(install plotly for the figure: pip install 'trilens[analysis]')</p>"
        except TrilensError as err:  # a result with nothing to draw says why
            return head + f"<p>{html.escape(str(err))}</p>"


def renamed(new: str, old: str) -> Any:
    """A method kept under its old name ``old``: it calls ``new`` and warns (``DeprecationWarning``)."""
    import warnings

    def method(self: Any, *args: Any, **kwargs: Any) -> Any:
        warnings.warn(f"{type(self).__name__}.{old}() is now .{new}(); the old name will go in a later release.",
                      DeprecationWarning, stacklevel=2)
        return getattr(self, new)(*args, **kwargs)

    method.__name__, method.__doc__ = old, f"The old name of ``{new}`` (deprecated)."
    return method


def _holds_result(path: Path) -> bool:
    return (path / RESULT_FILE).exists() or any((path / f).exists() for f in _LEGACY_FILES)


def _own_storage(tensors: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Contiguous CPU tensors, each with memory of its own (safetensors refuses tensors that share memory, as a
    tensor and a view of it kept under two names do)."""
    seen: set[int] = set()
    out = {}
    for name, t in tensors.items():
        t = t.detach().cpu().contiguous()
        ptr = t.untyped_storage().data_ptr()
        if ptr in seen or t.untyped_storage().nbytes() != t.numel() * t.element_size():
            t = t.clone()
        seen.add(t.untyped_storage().data_ptr())
        out[name] = t
    return out


def group(tensors: dict[str, torch.Tensor], prefix: str) -> dict[str, torch.Tensor]:
    """The tensors whose names start with ``prefix``, keyed without it (how nested state is stored)."""
    return {k[len(prefix):]: v for k, v in tensors.items() if k.startswith(prefix)}
