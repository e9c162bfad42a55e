import pytest
import torch

from neuroflow.models.optim import AdamW, LinearWarmup


def _optimizer(lr: float = 1.0) -> torch.optim.Optimizer:
    return AdamW([torch.nn.Parameter(torch.zeros(1))], lr=lr)


def test_adamw_defaults_are_fine_tuning_defaults():
    group = AdamW([torch.nn.Parameter(torch.zeros(1))]).param_groups[0]
    assert group["lr"] == 2e-5 and group["weight_decay"] == 0.01


def test_linear_warmup_then_decay():
    opt = _optimizer(1.0)
    sched = LinearWarmup(opt, warmup_ratio=0.2)
    sched.set_total_steps(10)  # 2 warm-up steps, 8 decay steps
    lrs = []
    for _ in range(10):
        lrs.append(opt.param_groups[0]["lr"])
        opt.step()
        sched.step()
    assert lrs == pytest.approx([0.0, 0.5, 1.0, 0.875, 0.75, 0.625, 0.5, 0.375, 0.25, 0.125])


def test_state_dict_is_plain_and_restores_the_schedule():
    opt = _optimizer(1.0)
    sched = LinearWarmup(opt, warmup_steps=1, final_ratio=0.5)
    sched.set_total_steps(5)
    for _ in range(3):
        opt.step()
        sched.step()
    state = sched.state_dict()
    assert all(isinstance(v, (int, float, list, bool, type(None))) for v in state.values())
    other = LinearWarmup(_optimizer(1.0), warmup_steps=1, final_ratio=0.5)
    other.load_state_dict(state)
    assert other._factor(3) == sched._factor(3) == pytest.approx(1 - 0.5 * 2 / 4)


def test_bad_warmup_ratio():
    with pytest.raises(ValueError, match="warmup_ratio"):
        LinearWarmup(_optimizer(), warmup_ratio=1.5)
