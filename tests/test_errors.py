"""Bad input gets an error that names the argument and what was expected."""
from __future__ import annotations

import pytest
import torch
from torch import nn

import tensoradapt as ta
from tensoradapt import CPDelta, LoRADelta, TaskLinear, TTDelta, TuckerDelta, parse_ranks


@pytest.mark.parametrize(
    "cls,ranks,match",
    [
        (TuckerDelta, (0, 4, 4), r"ranks\[0\] must be > 0"),
        (TuckerDelta, (2, -1, 4), r"ranks\[1\] must be > 0"),
        (CPDelta, 0, "ranks must be > 0"),
        (LoRADelta, -3, "ranks must be > 0"),
        (TTDelta, (0, 2), r"ranks\[0\] must be > 0"),
    ],
)
def test_non_positive_ranks(cls, ranks, match):
    with pytest.raises(ValueError, match=match):
        cls((3, 8, 6), ranks)


@pytest.mark.parametrize(
    "cls,ranks,match",
    [
        (TuckerDelta, (2, 9, 4), "r_out must be <= d_out: 9 exceeds 8"),
        (TuckerDelta, (2, 4, 7), "r_in must be <= d_in: 7 exceeds 6"),
        (TuckerDelta, (13, 3, 4), "r_task must be <= r_out \\* r_in: 13 exceeds 12"),
        (LoRADelta, 7, r"r must be <= min\(d_out, d_in\): 7 exceeds 6"),
        (TTDelta, (2, 7), "r2 must be <= d_in"),
    ],
)
def test_rank_above_what_the_mode_can_hold_is_refused_not_clipped(cls, ranks, match):
    with pytest.raises(ValueError, match=match):
        cls((3, 8, 6), ranks)


def test_task_rank_may_exceed_the_number_of_tasks():
    d = TuckerDelta((3, 64, 64), (4, 32, 32))  # the paper's setting
    assert d.ranks == (4, 32, 32) and d.task_factor.shape == (3, 4)


@pytest.mark.parametrize("cls,ranks", [(TuckerDelta, (4, 4)), (TuckerDelta, 4), (TTDelta, (1, 2, 3))])
def test_wrong_number_of_ranks(cls, ranks):
    with pytest.raises(ValueError, match=f"ranks for {cls.decomp} must be {len(cls.rank_names)} value"):
        cls((3, 8, 6), ranks)


def test_parse_ranks_checks_arity_and_format():
    assert parse_ranks("tucker", "4,32,32") == (4, 32, 32)
    assert parse_ranks("cp", "16") == 16
    with pytest.raises(ValueError, match="ranks for tt must be 2 value"):
        parse_ranks("tt", "4,32,32")
    with pytest.raises(ValueError, match="comma-separated ints"):
        parse_ranks("tucker", "4;32;x")
    with pytest.raises(ValueError, match="decomp must be one of"):
        parse_ranks("svd", "4")


@pytest.mark.parametrize("task", [3, -1, torch.tensor([0, 3]), torch.tensor([-1, 0])])
def test_task_id_outside_range_names_the_id_and_T(task):
    d = CPDelta((3, 4, 4), 2)
    with pytest.raises(IndexError, match=r"task id (3|-1) is outside \[0, T\) with T=3"):
        d(torch.randn(2, 4), task)


def test_task_of_the_wrong_type():
    d = CPDelta((3, 4, 4), 2)
    with pytest.raises(TypeError, match="integer tensor"):
        d(torch.randn(2, 4), torch.tensor([0.0, 1.0]))
    with pytest.raises(TypeError, match="task must be an int"):
        d(torch.randn(2, 4), "semantic")


def test_input_last_dim_must_be_d_in():
    with pytest.raises(ValueError, match=r"input last dim must be d_in=4, got x of shape \(2, 5\)"):
        CPDelta((3, 4, 4), 2)(torch.randn(2, 5), 0)


def test_per_sample_ids_must_divide_the_batch():
    with pytest.raises(ValueError, match="2 per-sample task ids do not divide the batch: x has leading dim 3"):
        CPDelta((3, 4, 4), 2)(torch.randn(3, 4), torch.tensor([0, 1]))


def test_target_that_is_not_a_linear():
    model = nn.Sequential(nn.Conv2d(3, 3, 1), nn.Linear(3, 3))
    with pytest.raises(TypeError, match="target '0' is a Conv2d, not an nn.Linear or nn.MultiheadAttention"):
        ta.adapt(model, ["0"], decomp="cp", num_tasks=2, ranks=2)
    assert isinstance(model[1], nn.Linear)  # nothing was replaced


def test_attention_targets_that_cannot_be_adapted():
    separate = nn.Sequential(nn.MultiheadAttention(8, 2, kdim=4, vdim=4))
    with pytest.raises(ValueError, match="kdim=4, vdim=4 besides embed_dim=8"):
        ta.adapt(separate, ["0"], decomp="cp", num_tasks=2, ranks=2)
    with pytest.raises(ValueError, match="'out_proj' is the out_proj of the model itself"):
        ta.adapt(nn.MultiheadAttention(8, 2), ["out_proj"], decomp="cp", num_tasks=2, ranks=2)
    with pytest.raises(ValueError, match="qkv must be a non-empty subset"):
        ta.adapt(nn.Sequential(nn.MultiheadAttention(8, 2)), ["0"], decomp="cp", num_tasks=2, ranks=2, qkv="qq")
    with pytest.raises(ValueError, match="needs in_delta, out_delta or both"):
        ta.TaskMultiheadAttention(nn.MultiheadAttention(8, 2))
    with pytest.raises(ValueError, match=r"delta shape \(2, 8, 8\) does not fit the attention's in-projection"):
        ta.TaskMultiheadAttention(nn.MultiheadAttention(8, 2), in_delta=CPDelta((2, 8, 8), 2), qkv="qv")


def test_freeze_base_must_be_a_bool():
    with pytest.raises(TypeError, match="freeze_base must be a bool, got 'no'"):
        ta.adapt(nn.Sequential(nn.Linear(3, 3)), ["0"], decomp="cp", num_tasks=2, ranks=2, freeze_base="no")


def test_a_nested_tensor_is_refused_naming_the_encoder_setting():
    layer = TaskLinear(nn.Linear(3, 4), CPDelta((2, 4, 3), 2))
    nested = torch.nested.nested_tensor([torch.randn(2, 3), torch.randn(1, 3)])
    with pytest.raises(ValueError, match="TaskLinear got a nested tensor.*use_nested_tensor=False"):
        layer(nested, task=0)


def test_target_pattern_that_matches_nothing():
    with pytest.raises(ValueError, match=r"targets \['qkv'\] matched no module of Sequential"):
        ta.adapt(nn.Sequential(nn.Linear(3, 3)), ["qkv"], decomp="cp", num_tasks=2, ranks=2)


def test_unknown_decomp_and_bad_qkv():
    with pytest.raises(ValueError, match="decomp must be one of"):
        ta.adapt(nn.Sequential(nn.Linear(3, 3)), ["0"], decomp="svd", num_tasks=2, ranks=2)
    with pytest.raises(ValueError, match="qkv must be a non-empty subset"):
        ta.adapt(nn.Sequential(nn.Linear(3, 9)), ["0"], decomp="cp", num_tasks=2, ranks=2, qkv="qx")
    with pytest.raises(ValueError, match="divisible by 3"):
        ta.adapt(nn.Sequential(nn.Linear(3, 8)), ["0"], decomp="cp", num_tasks=2, ranks=2, qkv="q")


def test_delta_that_does_not_fit_the_linear():
    with pytest.raises(ValueError, match=r"delta shape \(2, 5, 3\) does not fit the linear"):
        TaskLinear(nn.Linear(3, 4), CPDelta((2, 5, 3), 2))


def test_forward_without_a_routed_task():
    layer = TaskLinear(nn.Linear(3, 4), CPDelta((2, 4, 3), 2))
    with pytest.raises(RuntimeError, match="no task routed"):
        layer(torch.randn(1, 3))


def test_set_task_on_an_unadapted_model_and_out_of_range():
    with pytest.raises(ValueError, match="has no TaskLinear"):
        ta.set_task(nn.Sequential(nn.Linear(2, 2)), 0)
    model = ta.adapt(nn.Sequential(nn.Linear(2, 2)), ["0"], decomp="cp", num_tasks=2, ranks=1)
    with pytest.raises(IndexError, match="task id 5 is outside"):
        ta.set_task(model, 5)


def test_bad_shape_and_init():
    with pytest.raises(ValueError, match=r"shape must be \(T, d_out, d_in\)"):
        CPDelta((3, 4), 2)
    with pytest.raises(ValueError, match="init must be one of"):
        CPDelta((3, 4, 4), 2, init="xavier")


def test_from_tensor_needs_a_three_way_tensor():
    with pytest.raises(ValueError, match=r"dense must be a \(T, d_out, d_in\) tensor, got \(4, 4\)"):
        TuckerDelta.from_tensor(torch.randn(4, 4), (1, 2, 2))
