"""Nothing wrong is ever written: bad hyperparameters fail at construction, empty tensors merge to
empty tensors, and integer/bool tensors are always the base's, bit for bit."""

from __future__ import annotations

import pytest
import torch
from jsonargparse import ArgumentParser
from safetensors.torch import save_file

from neuroflow.merging import (
    DARE,
    NEURON_COLUMNS,
    NEURON_ROWS,
    POINT,
    TIES,
    DictExperts,
    MergeInputError,
    MergeMethod,
    NeuroMerging,
    SafetensorsExperts,
    SafetensorsFile,
    TaskArithmetic,
    TaskVectors,
    TrimStatistics,
    WeightAveraging,
    merge,
    resolve_routing,
    routing_from_state_dict,
    streamed_trim_statistics,
)
from neuroflow.merging import select
from neuroflow.merging.select import tensor_stream
from neuroflow.merging.sources import as_task_vector
from neuroflow.merging.validation import (
    check_choice,
    check_finite,
    check_int,
    check_range,
    validate_inputs,
)

NAN, INF = float("nan"), float("inf")

ALL_METHODS = [
    NeuroMerging(mask_rate=0.5),
    NeuroMerging(mask_rate=0.5, lambda_1=0.7, lambda_2=1.3),
    TIES(mask_rate=0.5),
    TIES(mask_rate=0.5, scope="tensor"),
    TaskArithmetic(scaling=0.4),
    DARE(drop_rate=0.5, seed=1),
    DARE(drop_rate=0.5, seed=1, then="ties"),
    WeightAveraging(),
]


def method_id(method: MergeMethod) -> str:
    return repr(method)


# ---------------------------------------------------------------------------------------------
# Item 1: every hyperparameter is validated at construction.
# ---------------------------------------------------------------------------------------------

BAD_HPARAMS = [
    (NeuroMerging, "lambda_2", NAN),
    (NeuroMerging, "lambda_2", INF),
    (NeuroMerging, "lambda_2", -INF),
    (NeuroMerging, "lambda_2", "Auto"),
    (NeuroMerging, "lambda_2", None),
    (NeuroMerging, "lambda_2", True),
    (NeuroMerging, "lambda_1", NAN),
    (NeuroMerging, "lambda_1", -INF),
    (NeuroMerging, "lambda_1", "auto"),
    (NeuroMerging, "mask_rate", 1.0),
    (NeuroMerging, "mask_rate", NAN),
    (NeuroMerging, "mask_rate", -0.1),
    (NeuroMerging, "mask_rate", INF),
    (NeuroMerging, "mask_rate", "0.5"),
    (TIES, "scaling", INF),
    (TIES, "scaling", NAN),
    (TIES, "scaling", "1.0"),
    (TIES, "mask_rate", 1.0),
    (TIES, "mask_rate", NAN),
    (TIES, "mask_rate", 1.5),
    (TIES, "scope", "layer"),
    (TIES, "scope", None),
    (TaskArithmetic, "scaling", NAN),
    (TaskArithmetic, "scaling", INF),
    (TaskArithmetic, "scaling", -INF),
    (TaskArithmetic, "scaling", False),
    (TaskArithmetic, "scaling", [0.3]),
    (DARE, "drop_rate", 1.0),
    (DARE, "drop_rate", NAN),
    (DARE, "drop_rate", -0.5),
    (DARE, "scaling", NAN),
    (DARE, "scaling", INF),
    (DARE, "seed", 1.5),
    (DARE, "seed", NAN),
    (DARE, "seed", True),
    (DARE, "seed", "3"),
    (DARE, "then", "sum"),
    (DARE, "then", None),
]


@pytest.mark.parametrize("cls, name, value", BAD_HPARAMS, ids=[f"{c.__name__}-{n}-{v!r}" for c, n, v in BAD_HPARAMS])
def test_bad_hyperparameter_fails_at_construction_naming_class_argument_and_value(cls, name, value) -> None:
    with pytest.raises(ValueError) as raised:
        cls(**{name: value})
    message = str(raised.value)
    assert cls.__name__ in message and name in message and repr(value) in message, message


@pytest.mark.parametrize(
    "cls, kwargs",
    [
        (NeuroMerging, {"mask_rate": 0.0, "lambda_1": -2.0, "lambda_2": 0.0}),
        (NeuroMerging, {"mask_rate": 0.999, "lambda_1": 1, "lambda_2": "auto"}),
        (TIES, {"mask_rate": 0.0, "scope": "tensor", "scaling": -1.0}),
        (TaskArithmetic, {"scaling": 0}),
        (DARE, {"drop_rate": 0.0, "seed": 2**40, "then": "ties", "scaling": -0.5}),
        (DARE, {"drop_rate": 0.999, "seed": -3}),
    ],
)
def test_valid_edge_hyperparameters_are_accepted_and_normalised(cls, kwargs) -> None:
    method = cls(**kwargs)
    for key, value in kwargs.items():
        got = getattr(method, key)
        assert got == value and type(got) is (type(value) if isinstance(value, str) else int if key == "seed" else float)


def test_with_params_goes_through_the_same_checks() -> None:
    with pytest.raises(ValueError, match="TIES: scaling .*inf"):
        TIES().with_params(scaling=INF)
    with pytest.raises(ValueError, match="NeuroMerging: mask_rate"):
        NeuroMerging().with_params(mask_rate=1.0)


def parse_method(config: str):
    parser = ArgumentParser(exit_on_error=False)
    parser.add_subclass_arguments(MergeMethod, "method")
    return parser.instantiate(parser.parse_args(["--method", config])).method


@pytest.mark.parametrize(
    "config, match",
    [
        ("class_path: neuroflow.merging.TIES\ninit_args:\n  scaling: .nan\n", r"TIES: scaling .*nan"),
        ("class_path: TaskArithmetic\ninit_args:\n  scaling: .inf\n", r"TaskArithmetic: scaling .*inf"),
        ("class_path: NeuroMerging\ninit_args:\n  lambda_2: .nan\n", r"NeuroMerging: lambda_2 .*nan"),
        ("class_path: NeuroMerging\ninit_args:\n  mask_rate: 1.0\n", r"NeuroMerging: mask_rate .*1\.0"),
        ("class_path: DARE\ninit_args:\n  drop_rate: 1.0\n", r"DARE: drop_rate .*1\.0"),
    ],
)
def test_yaml_nan_reaches_the_constructor_and_fails_there(config: str, match: str) -> None:
    # The constructors are the YAML schema: jsonargparse lets `.nan` through as a float, so the
    # constructor is the one place it can be refused.
    with pytest.raises(ValueError, match=match):
        parse_method(config)


def trim_stats_with_sigma(sigma: list[float]) -> TrimStatistics:
    return TrimStatistics(0.5, 4, 2, [torch.tensor(1.0)] * len(sigma), sigma)


@pytest.mark.parametrize("sigma", [[0.2, 1.0], [0.2, 1.0000001], [0.3, NAN]])
def test_auto_lambda_2_refuses_a_trim_that_removes_all_mass(monkeypatch, sigma) -> None:
    base = {"w": torch.ones(2, 2)}
    tv = TaskVectors(base, DictExperts([{"w": torch.full((2, 2), 2.0)}] * 2, names=["a", "b"]), resolve_routing(base))
    monkeypatch.setattr(tv, "trim_statistics", lambda mask_rate: trim_stats_with_sigma(sigma))
    with pytest.raises(MergeInputError, match=r"NeuroMerging.*expert 1 \(b\).*sigma.*lambda_2"):
        NeuroMerging(mask_rate=0.5).prepare(tv)
    # A fixed lambda_2 does not divide by 1 - sigma: nothing to refuse.
    assert NeuroMerging(mask_rate=0.5, lambda_2=1.5).prepare(tv)["lambda_2"] == 1.5


def test_auto_lambda_2_stays_finite_below_one() -> None:
    base = {"w": torch.ones(2, 2)}
    tv = TaskVectors(base, DictExperts([{"w": torch.full((2, 2), 2.0)}]), resolve_routing(base))
    tv.trim_statistics = lambda mask_rate: trim_stats_with_sigma([0.75])
    assert NeuroMerging(mask_rate=0.5).prepare(tv)["lambda_2"] == 4.0


def test_check_helpers_for_new_methods() -> None:
    class Mine:
        pass

    assert check_finite(Mine(), "alpha", 2) == 2.0 and type(check_finite("Mine", "alpha", 2)) is float
    assert check_finite("Mine", "alpha", "auto", special=("auto",)) == "auto"
    with pytest.raises(ValueError, match=r"^Mine: alpha must be a finite number or 'auto', got nan$"):
        check_finite(Mine(), "alpha", NAN, special=("auto",))
    assert check_range("Mine", "rate", 0.0, 0.0, 1.0, high_inclusive=False) == 0.0
    with pytest.raises(ValueError, match=r"^Mine: rate must be in \[0, 1\), got 1$"):
        check_range("Mine", "rate", 1, 0.0, 1.0, high_inclusive=False)
    with pytest.raises(ValueError, match=r"^Mine: rate must be in \(0, 1\], got 0.0$"):
        check_range("Mine", "rate", 0.0, 0.0, 1.0, low_inclusive=False)
    assert check_range("Mine", "k", 5.0, low=0.0) == 5.0
    with pytest.raises(ValueError, match=r"Mine: k must be >= 0, got -1"):
        check_range("Mine", "k", -1, low=0.0)
    assert check_int("Mine", "seed", 3.0) == 3 and type(check_int("Mine", "seed", 3.0)) is int
    with pytest.raises(ValueError, match=r"Mine: seed must be an integer, got 3.5"):
        check_int("Mine", "seed", 3.5)
    with pytest.raises(ValueError, match=r"Mine: n must be >= 1, got 0"):
        check_int("Mine", "n", 0, low=1)
    assert check_choice("Mine", "flag", True, (True, False)) is True
    with pytest.raises(ValueError, match=r"Mine: flag must be one of True, False, got 1"):
        check_choice("Mine", "flag", 1, (True, False))
    with pytest.raises(ValueError, match=r"Mine: mode must be one of 'a', 'b', got 'c'"):
        check_choice("Mine", "mode", "c", ("a", "b"))


def test_trim_statistics_mask_rate_of_nan_is_refused() -> None:
    with pytest.raises(ValueError, match="mask_rate"):
        streamed_trim_statistics(tensor_stream([torch.ones(1, 3)]), num_tasks=1, numel=3, mask_rate=NAN)


# ---------------------------------------------------------------------------------------------
# Item 2: empty tensors merge to empty tensors and leave everything else alone.
# ---------------------------------------------------------------------------------------------


def dense_model(experts: int = 3, seed: int = 0, dtype: torch.dtype = torch.float32):
    g = torch.Generator().manual_seed(seed)
    base = {
        "emb.weight": torch.randn(7, 4, generator=g),
        "lin.weight": torch.randn(3, 4, generator=g),
        "lin.bias": torch.randn(3, generator=g),
        "conv.weight": torch.randn(3, 2, 2, generator=g),
    }
    tuned = [{k: v + 0.1 * torch.randn(v.shape, generator=g) for k, v in base.items()} for _ in range(experts)]
    cast = lambda sd: {k: v.to(dtype) for k, v in sd.items()}  # noqa: E731
    return cast(base), [cast(e) for e in tuned]


EMPTY = {
    "rows0.weight": ((0, 5), NEURON_ROWS),
    "cols0.weight": ((5, 0), NEURON_ROWS),
    "t_rows0.weight": ((0, 5), NEURON_COLUMNS),
    "t_cols0.weight": ((5, 0), NEURON_COLUMNS),
    "vec0": ((0,), POINT),
    "conv0.weight": ((0, 3, 2), NEURON_ROWS),
    "conv1.weight": ((3, 0, 2), NEURON_ROWS),
    "point0.weight": ((4, 0), POINT),
}


def with_empty_tensors(base, experts):
    routing = {**routing_from_state_dict(base), "conv.weight": NEURON_ROWS}
    full_base, full_experts, full_routing = dict(base), [dict(e) for e in experts], dict(routing)
    # Interleaved with the non-empty tensors, so the stream's order around them is exercised too.
    for i, (name, (shape, route)) in enumerate(EMPTY.items()):
        full_base[name] = torch.empty(shape, dtype=next(iter(base.values())).dtype)
        for e in full_experts:
            e[name] = torch.empty(shape, dtype=full_base[name].dtype)
        full_routing[name] = route
    order = sorted(full_base)
    full_base = {n: full_base[n] for n in order}
    full_experts = [{n: e[n] for n in order} for e in full_experts]
    return (base, experts, routing), (full_base, full_experts, full_routing)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64, torch.bfloat16])
@pytest.mark.parametrize("method", ALL_METHODS, ids=method_id)
def test_empty_tensors_merge_to_empty_and_do_not_disturb_the_rest(method: MergeMethod, dtype) -> None:
    (base, experts, routing), (full_base, full_experts, full_routing) = with_empty_tensors(*dense_model(dtype=dtype))
    plain = merge(base, experts, method, routing=routing)
    full = merge(full_base, full_experts, method, routing=full_routing)
    assert list(full.state_dict) == list(full_base)
    for name, (shape, _) in EMPTY.items():
        out = full.state_dict[name]
        assert out.shape == shape and out.dtype == full_base[name].dtype and out.numel() == 0, name
    for name in base:
        assert torch.equal(full.state_dict[name], plain.state_dict[name]), name
    # The global statistics (thresholds, sigma, lambda_2) are those of the model without them.
    assert full.info["statistics"] == plain.info["statistics"]
    assert full.info["merged_numel"] == plain.info["merged_numel"]


@pytest.mark.parametrize("method", ALL_METHODS, ids=method_id)
def test_a_model_of_only_empty_tensors_is_its_base(method: MergeMethod) -> None:
    base = {name: torch.empty(shape) for name, (shape, _) in EMPTY.items()}
    routing = {name: route for name, (_, route) in EMPTY.items()}
    out = merge(base, [dict(base), dict(base)], method, routing=routing).state_dict
    assert all(out[n].shape == base[n].shape for n in base)


def test_neuron_merge_of_an_empty_tensor_returns_an_empty_update() -> None:
    method = NeuroMerging(mask_rate=0.5, lambda_1=1.0)
    stats = {"trim": TrimStatistics(0.5, 0, 0, [None, None], [0.0, 0.0]), "lambda_1": 1.0, "lambda_2": 1.0}
    for shape, route in [((0, 5), NEURON_ROWS), ((5, 0), NEURON_ROWS), ((5, 0), NEURON_COLUMNS), ((3, 0, 2), NEURON_ROWS)]:
        delta = method.merge_tensor("w", torch.empty(shape), torch.empty(2, *shape), route, stats)
        assert delta.shape == shape


@pytest.mark.parametrize("strategy", ["auto", "radix"])
@pytest.mark.parametrize("mask_rate", [0.0, 0.3, 0.8, 1.0])
def test_streamed_threshold_ignores_empty_tensors(strategy: str, mask_rate: float) -> None:
    g = torch.Generator().manual_seed(3)
    dense = [torch.randn(2, 40, generator=g), torch.randn(2, 3, 5, generator=g)]
    empties = [torch.empty(2, 0), torch.empty(2, 0, 5), torch.empty(2, 5, 0), torch.empty(2, 3, 0, 2)]
    mixed = [empties[0], dense[0], empties[1], empties[2], dense[1], empties[3]]
    numel = sum(t[0].numel() for t in dense)
    want = streamed_trim_statistics(tensor_stream(dense), 2, numel, mask_rate, strategy=strategy)
    got = streamed_trim_statistics(tensor_stream(mixed), 2, numel, mask_rate, strategy=strategy)
    assert got.k == want.k and got.sigma == want.sigma
    assert [None if t is None else t.item() for t in got.thresholds] == [None if t is None else t.item() for t in want.thresholds]

    # A stream whose own blocks are empty (any shape with T rows) is fine too.
    def stream(stride: int = 1):
        for t in mixed:
            yield t if t.numel() == 0 else t.reshape(2, -1)[:, ::stride]

    assert streamed_trim_statistics(stream, 2, numel, mask_rate, strategy=strategy).sigma == want.sigma


def test_sampled_statistics_skip_empty_tensors(monkeypatch) -> None:
    # A small sample makes the window select take a strided sample (stride > 1) over the stream.
    monkeypatch.setattr(select, "_SAMPLE_SIZE", 8)
    (base, experts, routing), (full_base, full_experts, full_routing) = with_empty_tensors(*dense_model())
    plain = TaskVectors(base, DictExperts(experts), resolve_routing(base, routing)).trim_statistics(0.6)
    full = TaskVectors(full_base, DictExperts(full_experts), resolve_routing(full_base, full_routing)).trim_statistics(0.6)
    assert full.summary() == plain.summary()


# ---------------------------------------------------------------------------------------------
# Item 3: integer and bool tensors are copied from the base, bit for bit, never cast.
# ---------------------------------------------------------------------------------------------


def model_with_buffers(experts: int = 3):
    base, tuned = dense_model(experts=experts, seed=4)
    buffers = {
        "embeddings.position_ids": torch.arange(512, dtype=torch.int64)[None],
        "embeddings.token_type_ids": torch.zeros(1, 512, dtype=torch.int64),
        "attn.mask": torch.tril(torch.ones(6, 6, dtype=torch.bool)),
        "quant.codes": torch.arange(-8, 8, dtype=torch.int8).reshape(4, 4),
        "vocab.ids": torch.tensor([2**62 + 1, -(2**62) - 3, 7], dtype=torch.int64),  # not exact in float
        "bytes": torch.arange(250, 256, dtype=torch.uint8),
        "counts": torch.tensor([[3, 1], [4, 1]], dtype=torch.int32),
    }
    base = {**base, **buffers}
    for i, expert in enumerate(tuned):
        # Every expert's buffers differ from the base (and from each other).
        expert.update(
            {
                "embeddings.position_ids": buffers["embeddings.position_ids"] + i + 1,
                "embeddings.token_type_ids": torch.full((1, 512), i + 1, dtype=torch.int64),
                "attn.mask": ~buffers["attn.mask"],
                "quant.codes": -buffers["quant.codes"] - i,
                "vocab.ids": buffers["vocab.ids"] - 2 * i - 1,
                "bytes": buffers["bytes"] - 10 * (i + 1),
                "counts": buffers["counts"] * (i + 2),
            }
        )
    return base, tuned, list(buffers)


def assert_buffers_are_the_base(out, base, names) -> None:
    for name in names:
        assert out[name].dtype == base[name].dtype, name
        assert out[name].shape == base[name].shape, name
        assert torch.equal(out[name], base[name]), name
        assert out[name] is not base[name] and out[name].data_ptr() != base[name].data_ptr(), name


@pytest.mark.parametrize("method", ALL_METHODS, ids=method_id)
def test_integer_and_bool_buffers_are_the_base_bit_for_bit(method: MergeMethod) -> None:
    base, experts, buffers = model_with_buffers()
    snapshot = {k: v.clone() for k, v in base.items()}
    # Even a routing that names the buffers as merged tensors cannot get them merged.
    routing = {**{n: "point" for n in buffers}, "embeddings.position_ids": "neuron", "quant.codes": "neuron"}
    result = merge(base, experts, method, routing=routing)
    assert_buffers_are_the_base(result.state_dict, base, buffers)
    assert result.info["routing"]["skip"] == len(buffers)
    assert result.info["merged_numel"] == sum(base[n].numel() for n in base if n not in buffers)
    assert all(torch.equal(base[k], snapshot[k]) for k in base)


@pytest.mark.parametrize("method", [NeuroMerging(mask_rate=0.5), TIES(mask_rate=0.5), DARE(drop_rate=0.5)], ids=method_id)
def test_integer_buffers_do_not_enter_the_global_statistics(method: MergeMethod) -> None:
    base, experts, buffers = model_with_buffers()
    floats_only = merge({k: v for k, v in base.items() if k not in buffers}, [{k: e[k] for k in e if k not in buffers} for e in experts], method)
    result = merge(base, experts, method)
    assert result.info["statistics"] == floats_only.info["statistics"]
    for name in floats_only.state_dict:
        assert torch.equal(result.state_dict[name], floats_only.state_dict[name]), name


def test_an_expert_buffer_of_another_dtype_or_shape_still_yields_the_base() -> None:
    base, experts, buffers = model_with_buffers(experts=2)
    experts[0]["embeddings.position_ids"] = experts[0]["embeddings.position_ids"].to(torch.int32)
    experts[1]["embeddings.position_ids"] = torch.arange(128)[None]  # a shorter max length
    experts[1]["attn.mask"] = experts[1]["attn.mask"].to(torch.uint8)
    out = merge(base, experts, NeuroMerging(mask_rate=0.5)).state_dict
    assert_buffers_are_the_base(out, base, buffers)


def test_lazy_sources_keep_the_base_buffers(tmp_path) -> None:
    base, experts, buffers = model_with_buffers(experts=2)
    save_file(base, str(tmp_path / "base.safetensors"))
    for i, e in enumerate(experts):
        save_file(e, str(tmp_path / f"e{i}.safetensors"))
    lazy_base = SafetensorsFile(tmp_path / "base.safetensors")
    source = SafetensorsExperts([tmp_path / f"e{i}.safetensors" for i in range(2)])
    out = merge(lazy_base, source, TIES(mask_rate=0.5)).state_dict
    assert_buffers_are_the_base(out, base, buffers)
    eager = merge(base, experts, TIES(mask_rate=0.5)).state_dict
    assert all(torch.equal(out[k], eager[k]) for k in base)


def test_task_vectors_refuse_an_integer_tensor_routed_for_merging() -> None:
    base, experts, _ = model_with_buffers(experts=2)
    routing = {**resolve_routing(base), "embeddings.position_ids": POINT}
    with pytest.raises(MergeInputError, match=r"'embeddings.position_ids'.*torch.int64.*skip"):
        TaskVectors(base, DictExperts(experts), routing)


def test_validation_refuses_an_integer_tensor_routed_for_merging() -> None:
    base, experts, _ = model_with_buffers(experts=2)
    routing = {**resolve_routing(base), "attn.mask": POINT}
    with pytest.raises(MergeInputError, match=r"'attn.mask'.*torch.bool.*skip"):
        validate_inputs(base, DictExperts(experts), routing)


@pytest.mark.parametrize("dtype", [torch.int64, torch.int32, torch.uint8, torch.bool])
def test_as_task_vector_never_casts_integers(dtype) -> None:
    stored = torch.ones(3, dtype=dtype)
    with pytest.raises(TypeError, match=str(dtype)):
        as_task_vector(stored, torch.zeros(3, dtype=dtype), torch.float32, stored_is_task_vector=False)
    with pytest.raises(TypeError, match=str(dtype)):
        as_task_vector(stored, torch.zeros(3), torch.float32, stored_is_task_vector=True)


def test_integer_tensors_are_exact_where_floats_would_round() -> None:
    # 2**62 + 1 is not a float32 (nor float64) value: any cast on the way would change it.
    base, experts, _ = model_with_buffers(experts=2)
    out = merge(base, experts, TaskArithmetic(scaling=1.0)).state_dict["vocab.ids"]
    assert out.dtype == torch.int64 and out.tolist() == [2**62 + 1, -(2**62) - 3, 7]
    assert float(2**62 + 1) == float(2**62)  # the value a float round trip would have written


def test_a_stream_of_no_blocks_reports_the_missing_scalars(monkeypatch) -> None:
    # Sampled path (stride > 1): an empty sample must reach the clear count check, not torch.cat([]).
    monkeypatch.setattr(select, "_SAMPLE_SIZE", 8)
    with pytest.raises(ValueError, match="yielded 0 scalars per task, expected numel=100"):
        streamed_trim_statistics(lambda stride=1: iter(()), num_tasks=2, numel=100, mask_rate=0.5)
