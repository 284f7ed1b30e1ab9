"""Networks: shapes, parameter counts, and the grouped committee equal to the per-expert loop."""
import torch

from licm.models import (Discriminator, Expert, GroupedCommittee, LoopCommittee, expert_parameter_count,
                         grouped_to_loop, loop_to_grouped)


def test_expert_parameter_count_matches_paper():
    # LICM footnote 5: ~27K, ~110K, ~440K parameters at 32, 64, 128 filters.
    assert 27_000 <= expert_parameter_count(32) <= 29_000
    assert 105_000 <= expert_parameter_count(64) <= 115_000
    assert 430_000 <= expert_parameter_count(128) <= 450_000


def test_expert_convs_before_bn_have_no_bias():
    expert = Expert(8, 2)
    convs = [m for m in expert.modules() if isinstance(m, torch.nn.Conv2d)]
    assert all(c.bias is None for c in convs[:-1]) and convs[-1].bias is not None


def test_expert_is_fully_convolutional_and_in_unit_interval():
    expert = Expert(4, 1)
    for h, w in [(32, 32), (17, 23)]:
        y = expert(torch.rand(2, 1, h, w))
        assert y.shape == (2, 1, h, w) and float(y.detach().min()) > 0 and float(y.detach().max()) < 1
    assert Expert(4, 3, receptive_field=True)(torch.rand(2, 1, 32, 32)).shape == (2, 1, 32, 32)


def test_discriminator_shapes():
    d = Discriminator()
    s = d(torch.rand(5, 1, 32, 32))
    assert s.shape == (5,) and float(s.detach().min()) > 0 and float(s.detach().max()) < 1
    assert Discriminator(wasserstein=True)(torch.rand(3, 1, 32, 32)).shape == (3,)
    small = Discriminator([4, 8], [1, 1], 16, image_size=16)
    assert small(torch.rand(2, 1, 16, 16)).shape == (2,)


def test_grouped_equals_loop_and_round_trips():
    torch.manual_seed(0)
    for rf in (False, True):
        loop = LoopCommittee(3, 4, 3, rf).double()
        for m in loop.modules():      # non-trivial BN statistics and affine parameters
            if isinstance(m, torch.nn.BatchNorm2d):
                m.running_mean.uniform_(-0.5, 0.5)
                m.running_var.uniform_(0.5, 2.0)
                m.weight.data.uniform_(0.5, 1.5)
                m.bias.data.uniform_(-0.5, 0.5)
        grouped = loop_to_grouped(loop, GroupedCommittee(3, 4, 3, rf).double())
        x = torch.rand(5, 1, 32, 32, dtype=torch.float64)
        for train in (True, False):
            loop.train(train)
            grouped.train(train)
            a, b = loop(x), grouped(x)
            assert a.shape == b.shape == (5, 3, 1, 32, 32)
            torch.testing.assert_close(a, b, rtol=0, atol=1e-12)
        back = grouped_to_loop(grouped, LoopCommittee(3, 4, 3, rf).double())
        for (k, v), (k2, v2) in zip(loop.state_dict().items(), back.state_dict().items()):
            assert k == k2
            torch.testing.assert_close(v, v2, rtol=0, atol=1e-12)   # running stats: two updates, round-off


def test_grouped_gradients_match_loop():
    torch.manual_seed(1)
    loop = LoopCommittee(3, 4, 2).double()
    grouped = loop_to_grouped(loop, GroupedCommittee(3, 4, 2).double())
    x = torch.rand(4, 1, 16, 16, dtype=torch.float64)
    w = torch.rand(4, 3, 1, 16, 16, dtype=torch.float64)
    (loop(x) * w).sum().backward()
    (grouped(x) * w).sum().backward()
    g_loop = loop_to_grouped(_grads_as_model(loop), GroupedCommittee(3, 4, 2).double())
    for (k, p) in grouped.net.named_parameters():
        torch.testing.assert_close(p.grad, dict(g_loop.net.named_parameters())[k].data, rtol=1e-10, atol=1e-12)


def _grads_as_model(loop: LoopCommittee) -> LoopCommittee:
    copy = LoopCommittee(**loop.config).double()
    with torch.no_grad():
        for p, q in zip(copy.parameters(), loop.parameters()):
            p.copy_(q.grad)
    return copy
