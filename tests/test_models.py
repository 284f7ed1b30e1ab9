"""Networks: shapes, parameter counts, and the batched networks equal to plain per-seed networks."""
import copy

import pytest
import torch

from licm import models
from licm.models import Committee, Discriminator, Discriminators, Expert, expert_parameter_count


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


def _plain(seeds=2, experts=3, width=4, hidden=3, rf=False):
    """Plain per-seed experts with non-trivial BatchNorm statistics and affine parameters."""
    torch.manual_seed(0)
    nets = [[Expert(width, hidden, rf).double() for _ in range(experts)] for _ in range(seeds)]
    for m in (m for seed in nets for e in seed for m in e.modules()):
        if isinstance(m, torch.nn.BatchNorm2d):
            m.running_mean.uniform_(-0.5, 0.5)
            m.running_var.uniform_(0.5, 2.0)
            m.weight.data.uniform_(0.5, 1.5)
            m.bias.data.uniform_(-0.5, 0.5)
    return nets


@pytest.mark.parametrize("rf", [False, True])
@pytest.mark.parametrize("layout", ["vectorized", "loop"])
@pytest.mark.parametrize("channels_last", [False, True])
def test_committee_equals_plain_experts_per_seed(rf, layout, channels_last):
    """Seed s, expert j of the batched committee maps seed s's input exactly as the plain expert
    would, in both BatchNorm modes, and updates the same running statistics."""
    nets = _plain(rf=rf)
    c = Committee(3, 4, 3, rf, seeds=2, layout=layout).double().copy_from(copy.deepcopy(nets))
    c.use_channels_last(channels_last)
    x = torch.rand(5, 2, 32, 32, dtype=torch.float64)
    for bn in ("batch", "running"):
        y = c(x, bn)
        assert y.shape == (5, 2, 3, 32, 32)
        for s in range(2):
            for j, e in enumerate(nets[s]):
                e.train(bn == "batch")
                torch.testing.assert_close(y[:, s, j], e(x[:, s:s + 1])[:, 0], rtol=0, atol=1e-12)
    back = Committee(3, 4, 3, rf, seeds=2).double().copy_from(nets)          # the plain nets after both calls
    for k, v in back.state_dict().items():
        torch.testing.assert_close(c.state_dict()[k], v, rtol=0, atol=1e-12, msg=k)


def test_vectorized_and_loop_gradients_agree():
    nets = _plain(hidden=2)
    a = Committee(3, 4, 2, seeds=2, layout="vectorized").double().copy_from(copy.deepcopy(nets))
    b = Committee(3, 4, 2, seeds=2, layout="loop").double().copy_from(copy.deepcopy(nets))
    x = torch.rand(4, 2, 16, 16, dtype=torch.float64)
    w = torch.rand(4, 2, 3, 16, 16, dtype=torch.float64)
    ga = torch.autograd.grad((a(x) * w).sum(), list(a.parameters()))
    gb = torch.autograd.grad((b(x) * w).sum(), list(b.parameters()))
    for p, q in zip(ga, gb):
        torch.testing.assert_close(p, q, rtol=1e-10, atol=1e-12)


def test_discriminators_equal_plain_discriminators():
    torch.manual_seed(1)
    plain = [Discriminator([4, 8, 8], [2, 1, 1], 16).double() for _ in range(3)]
    d = Discriminators([4, 8, 8], [2, 1, 1], 16, seeds=3).double().copy_from(plain)
    x = torch.rand(6, 3, 32, 32, dtype=torch.float64)
    z = d.logits(x)
    assert z.shape == (6, 3)
    for s, p in enumerate(plain):
        torch.testing.assert_close(z[:, s], p.logits(x[:, s:s + 1]), rtol=0, atol=1e-12)


def test_seed_state_round_trip_and_single_seed_view():
    """A seed's slice of the batched state loads into a one-seed network that computes the same."""
    params = {"model": {"experts": 3, "expert_width": 4, "expert_hidden_layers": 1, "receptive_field": False,
                        "disc_widths": [4, 4, 4], "disc_convs": [1, 1, 1], "disc_fc": 8},
              "data": {"image_size": 32}, "train": {"loss": "gan"}}
    c, d = models.build(params, [5, 6, 7])
    states = [models.seed_state(c.state_dict(), 3, s) for s in range(3)]
    assert all(torch.equal(v, w) for v, w in zip(models.join_seeds(states).values(), c.state_dict().values()))
    one_c, one_d = models.empty(params, 1)
    one_c.load_state_dict(states[1])
    one_d.load_state_dict(models.seed_state(d.state_dict(), 3, 1))
    experts, disc = models.SeedExperts(one_c).eval(), models.SeedDiscriminator(one_d).eval()
    x = torch.rand(4, 1, 32, 32)
    with torch.no_grad():
        batched = c(x.expand(4, 3, 32, 32), "running")[:, 1]                  # [4, N', H, W]
        torch.testing.assert_close(experts(x)[:, :, 0], batched)
        torch.testing.assert_close(disc.logits(x), d.logits(x.expand(4, 3, 32, 32))[:, 1])
    # seed 6's initial weights do not depend on the batch it is built in
    alone, _ = models.build(params, [6])
    assert all(torch.equal(v, w) for v, w in zip(alone.state_dict().values(), states[1].values()))
