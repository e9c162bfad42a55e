"""The checks of a parsed config that parsing alone does not make, cheap enough for every stage
of a recipe before anything runs: a merge method's hyperparameters are validated by its
constructor (ranges, finiteness), so the method is built, and so is every search candidate."""

from __future__ import annotations

from typing import Any

from neuroflow.commands.errors import ConfigError, explain, import_path


def _get(namespace: Any, key: str) -> Any:
    try:
        return namespace.get(key) if hasattr(namespace, "get") else None
    except (KeyError, AttributeError):
        return None


def check_merge_method(config: Any) -> None:
    """Build the merge method of a parsed `merge` config (a no-op for other configs).

    Args:
        config: the subcommand's parsed namespace (`parsed["merge"]`).

    Raises:
        ConfigError: the method, or a candidate of the search grid, refuses its hyperparameters;
            the message names `model.init_args.method` (or `.search`).
    """
    from jsonargparse import ArgumentParser

    from neuroflow.evaluation import MergeModule
    from neuroflow.merging import MergeMethod
    from neuroflow.merging.search import check_search_keys, expand_grid, with_params

    model = _get(config, "model")
    class_path = _get(model, "class_path") if model is not None else None
    init = _get(model, "init_args")
    if not isinstance(class_path, str) or init is None:
        return
    cls = import_path(class_path)
    if not (isinstance(cls, type) and issubclass(cls, MergeModule)):
        return
    method_ns = _get(init, "method")
    if method_ns is None:
        return
    parser = ArgumentParser(exit_on_error=False)
    parser.add_argument("--method", type=MergeMethod)
    raw = method_ns.as_dict() if hasattr(method_ns, "as_dict") else method_ns
    try:
        method = parser.instantiate_classes(parser.parse_object({"method": raw})).method
    except Exception as err:
        raise ConfigError(f"model.init_args.method: {explain(err)}", str(err)) from err
    search = _get(init, "search")
    if not search:
        return
    search = search.as_dict() if hasattr(search, "as_dict") else dict(search)
    try:
        check_search_keys(method, search)
        for params in expand_grid(search):
            with_params(method, params)
    except Exception as err:
        raise ConfigError(f"model.init_args.search: {explain(err)}", str(err)) from err
