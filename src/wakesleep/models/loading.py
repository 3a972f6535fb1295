"""A user's own model named on the command line: ``--model FILE.py:FACTORY`` or
``--model package.module:FACTORY``, and the model record a run directory keeps.

The factory is called with ``data_dim=D`` (the data's width) when it takes that argument, else with
none, and must return a ``torch.nn.Module`` that meets the model contract
(:mod:`wakesleep.models.contract`).  A run directory records ``{"kind": "user", "spec": …,
"data_dim": D}`` (a file's path made absolute), so that ``evaluate``, ``sample`` and ``--resume``
rebuild the same model.  They do so only when their own command line names that model again
(:func:`check_named`): a run directory is data, and opening one never runs code it names.
"""

from __future__ import annotations

import hashlib
import importlib
import importlib.util
import inspect
import sys
from pathlib import Path
from typing import Any

from torch import nn

from wakesleep.models.helmholtz import HelmholtzMachine

USER = "user"


class ModelSpecError(ValueError):
    """A ``--model`` spec that names no loadable factory (the message names the fix)."""


def is_user_spec(text: str) -> bool:
    """Whether ``text`` names a user's factory (``FILE.py:FACTORY`` or ``package.module:FACTORY``)."""
    return isinstance(text, str) and ":" in text


def _split(spec: str) -> tuple[str, str]:
    target, _, factory = spec.rpartition(":")
    if not target or not factory.isidentifier():
        raise ModelSpecError(f"--model {spec!r}: expected FILE.py:FACTORY or package.module:FACTORY, with FACTORY a function name")
    return target, factory


def resolve_spec(spec: str) -> str:
    """The spec with a file's path made absolute (so a run opens from any directory).

    Raises:
        ModelSpecError: a malformed spec, or a ``.py`` file that does not exist.
    """
    target, factory = _split(spec)
    if target.endswith(".py"):
        path = Path(target).expanduser()
        if not path.is_file():
            raise ModelSpecError(f"--model {spec!r}: there is no file {path}; give the path of your model's .py file")
        return f"{path.resolve()}:{factory}"
    return spec


def load_factory(spec: str):
    """Import the module or file of ``spec`` and return its factory.

    A file is imported as a module of its own (named after its path), with its directory on
    ``sys.path`` while it loads, so it may import the files beside it.

    Raises:
        ModelSpecError: a malformed spec, a missing file or module, an import that fails (its
            error's first line is given), or a factory that is missing or not callable.
    """
    target, factory = _split(resolve_spec(spec))
    if target.endswith(".py"):
        path = Path(target)
        name = f"wakesleep_user_{path.stem}_{hashlib.sha1(str(path).encode()).hexdigest()[:8]}"
        module = sys.modules.get(name)
        if module is None:
            loader_spec = importlib.util.spec_from_file_location(name, path)
            module = importlib.util.module_from_spec(loader_spec)
            sys.path.insert(0, str(path.parent))
            sys.modules[name] = module
            try:
                loader_spec.loader.exec_module(module)
            except Exception as e:
                sys.modules.pop(name, None)
                raise ModelSpecError(
                    f"--model {spec!r}: importing {path} failed ({type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''})"
                ) from e
            finally:
                sys.path.remove(str(path.parent))
    else:
        try:
            module = importlib.import_module(target)
        except ImportError as e:
            raise ModelSpecError(f"--model {spec!r}: cannot import {target} ({e}); install it, or give FILE.py:FACTORY") from e
    fn = getattr(module, factory, None)
    if not callable(fn):
        names = sorted(
            n for n, v in vars(module).items() if callable(v) and not n.startswith("_") and getattr(v, "__module__", None) == module.__name__
        )
        raise ModelSpecError(f"--model {spec!r}: {target} defines no function {factory!r}; its functions and classes: {', '.join(names) or 'none'}")
    return fn


def build_user_model(spec: str, data_dim: int | None) -> nn.Module:
    """Call the factory of ``spec`` (with ``data_dim`` when it takes it and it is given) and check
    it returned a module.

    Raises:
        ModelSpecError: as :func:`load_factory`, or a factory that fails or returns no ``nn.Module``.
    """
    fn = load_factory(spec)
    try:
        params = inspect.signature(fn).parameters
    except (TypeError, ValueError):
        params = {}
    try:
        model = fn(data_dim=data_dim) if "data_dim" in params and data_dim is not None else fn()
    except Exception as e:
        raise ModelSpecError(f"--model {spec!r}: the factory raised {type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}") from e
    if not isinstance(model, nn.Module):
        raise ModelSpecError(
            f"--model {spec!r}: the factory returned a {type(model).__name__}, not a torch.nn.Module; "
            "return the model (see wakesleep.models.contract)"
        )
    return model


def user_model_config(spec: str, data_dim: int) -> dict[str, Any]:
    """The record of a user's model kept in a run directory."""
    return {"kind": USER, "spec": resolve_spec(spec), "data_dim": int(data_dim)}


def model_from_config(config: dict[str, Any]) -> nn.Module:
    """Rebuild an untrained model from a run's model record: a user's factory
    (:func:`user_model_config`) or a Helmholtz machine (:meth:`HelmholtzMachine.from_config`).

    Raises:
        ModelSpecError: a user's model that no longer loads; ValueError: an unknown kind.
    """
    if config.get("kind") == USER:
        return build_user_model(config["spec"], config["data_dim"])
    return HelmholtzMachine.from_config(config)


def check_named(record: dict[str, Any], named: str | None, source: str | Path) -> None:
    """Check that the model a run records (``record``, read from ``source``) may be rebuilt: a
    user's model only when the caller names the same model (``named``, a ``--model`` spec given
    by the user), so that opening a run never imports code that only the run names (an edited
    ``config.json`` or ``run.json`` could name any file); a built-in model only when ``named`` is None.

    Raises:
        ModelSpecError: a user's model not named, or named otherwise than recorded; ``named`` for a
            built-in model.
    """
    if not isinstance(record, dict) or record.get("kind") != USER:
        if named is not None and isinstance(record, dict):
            raise ModelSpecError(f"--model {named}: {source} records a built-in {record.get('kind', '')} model, not your own; drop --model")
        return
    spec = record.get("spec")
    if named is None:
        raise ModelSpecError(
            f"{source} names your own model {spec}, and opening a run runs no code it names: pass --model {spec} to run that code (if you trust it)"
        )
    if resolve_spec(named) != spec:
        raise ModelSpecError(f"--model {named} is not the model {source} was trained with ({spec}): pass --model {spec}")


def model_config(model: nn.Module, spec: str | None, data_dim: int) -> dict[str, Any]:
    """The record to keep for ``model``: its own ``config`` (Helmholtz machines) or the user spec."""
    if spec is not None:
        return user_model_config(spec, data_dim)
    return dict(model.config)
