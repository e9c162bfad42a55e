import pytest

from neuroflow.class_paths import import_path, instantiate, is_class_config, resolve_class
from neuroflow.merging import TIES, MergeMethod, TaskArithmetic


def test_import_path_resolves_dotted_and_bare_names():
    assert import_path("neuroflow.merging.TIES") is TIES
    assert import_path("TIES", "neuroflow.merging") is TIES
    assert import_path("TIES") is None  # a bare name without a default module
    assert import_path("neuroflow.merging.NoSuchMethod") is None
    assert import_path("no_such_package.Thing") is None


def test_resolve_class_names_the_setting_and_the_base():
    assert resolve_class("neuroflow.merging.TaskArithmetic", MergeMethod) is TaskArithmetic
    with pytest.raises(ValueError, match=r"fallback: 'neuroflow.merging.Nope' does not import"):
        resolve_class("neuroflow.merging.Nope", MergeMethod, what="fallback")
    with pytest.raises(ValueError, match=r"'collections.OrderedDict' is not a neuroflow.merging.base.MergeMethod subclass"):
        resolve_class("collections.OrderedDict", MergeMethod)


def test_instantiate_passes_init_args():
    method = instantiate({"class_path": "neuroflow.merging.TIES", "init_args": {"mask_rate": 0.7}}, MergeMethod)
    assert isinstance(method, TIES) and method.mask_rate == 0.7
    assert is_class_config({"class_path": "x.Y"}) and not is_class_config({"class_path": 3}) and not is_class_config("x.Y")
