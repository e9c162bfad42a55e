import torch

from neuroflow.experts import fingerprint_state_dict


def test_same_content_same_fingerprint_regardless_of_order():
    a = {"x": torch.arange(6.0).reshape(2, 3), "y": torch.ones(2)}
    b = {"y": torch.ones(2), "x": torch.arange(6.0).reshape(2, 3).clone()}
    assert fingerprint_state_dict(a) == fingerprint_state_dict(b)
    assert fingerprint_state_dict(a).startswith("sha256:") and len(fingerprint_state_dict(a)) == 7 + 64


def test_every_attribute_changes_the_fingerprint():
    base = {"x": torch.arange(6.0).reshape(2, 3)}
    fp = fingerprint_state_dict(base)
    changed_value = {"x": base["x"].clone()}
    changed_value["x"][1, 2] += 1e-6
    variants = [
        changed_value,
        {"z": base["x"]},                              # name
        {"x": base["x"].reshape(3, 2)},               # shape
        {"x": base["x"].double()},                    # dtype
        {"x": base["x"], "extra": torch.zeros(0)},    # an extra (empty) tensor
    ]
    assert len({fp, *(fingerprint_state_dict(v) for v in variants)}) == 1 + len(variants)


def test_bfloat16_and_non_contiguous_tensors():
    t = torch.randn(4, 4)
    assert fingerprint_state_dict({"w": t.t()}) == fingerprint_state_dict({"w": t.t().contiguous()})
    assert fingerprint_state_dict({"w": t.bfloat16()}) != fingerprint_state_dict({"w": t.half()})
