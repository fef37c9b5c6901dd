"""Models: registry, shapes, SE weights, parameter counts against the reference architecture."""
import math
import pytest
import torch

from sedeploy.models import count_parameters, create_model, list_models, model_config


def reference_params(se: bool, cin=3, widths=(32, 64, 128), side=4, hidden=512, classes=10, r=16) -> int:
    """Parameter count of the reference architecture, computed layer by layer from its description."""
    n, c = 0, cin
    for w in widths:
        n += c * w * 9 + w          # conv 3x3 with bias
        n += 2 * w                  # BatchNorm affine
        if se:
            n += 2 * w * (w // r)   # two bias-free Linear layers
        c = w
    n += c * side * side * hidden + hidden + hidden * classes + classes
    return n


def test_registry_lists_both():
    assert list_models() == ["cnn", "se_cnn"]
    with pytest.raises(ValueError, match="cnn, se_cnn"):
        create_model("resnet")
    with pytest.raises(ValueError, match="unknown config"):
        create_model("cnn", depth=3)


@pytest.mark.parametrize("name,se", [("cnn", False), ("se_cnn", True)])
def test_parameter_counts_match_reference(name, se):
    m = create_model(name)
    assert count_parameters(m) == reference_params(se)
    assert count_parameters(m) == {"cnn": 1_147_914, "se_cnn": 1_150_602}[name]


def test_se_bottlenecks_are_2_4_8():
    m = create_model("se_cnn")
    assert [b.se.fc1.out_features for b in m.blocks] == [2, 4, 8]
    assert all(b.se.fc1.bias is None and b.se.fc2.bias is None for b in m.blocks)


@pytest.mark.parametrize("name", list_models())
@pytest.mark.parametrize("cfg", [{}, {"in_channels": 1, "num_classes": 5}, {"input_size": 64, "widths": (16, 32)}])
def test_shapes_and_explain(name, cfg):
    torch.manual_seed(0)
    m = create_model(name, **cfg).eval()
    c, s = cfg.get("in_channels", 3), cfg.get("input_size", 32)
    widths = cfg.get("widths", (32, 64, 128))
    x = torch.randn(4, c, s, s)
    logits, se, fmap = m.forward_explain(x)
    assert logits.shape == (4, cfg.get("num_classes", 10))
    torch.testing.assert_close(logits, m(x), rtol=0, atol=0)
    assert fmap.shape == (4, widths[-1], s // 2 ** (len(widths) - 1), s // 2 ** (len(widths) - 1))
    if name == "se_cnn":
        assert [w.shape[1] for w in se] == list(widths)
        for w in se:
            assert (w > 0).all() and (w < 1).all()
    else:
        assert se == []
    # config round trip rebuilds the same architecture
    m2 = create_model(name, **model_config(m))
    m2.load_state_dict(m.state_dict())


def test_feature_map_is_se_reweighted():
    m = create_model("se_cnn").eval()
    x = torch.randn(2, 3, 32, 32)
    _, se, fmap = m.forward_explain(x)
    h = x
    for b in m.blocks[:-1]:
        h = b(h)
    last = m.blocks[-1]
    pre = last.relu(last.bn(last.conv(h)))
    torch.testing.assert_close(fmap, pre * se[-1][:, :, None, None])


def test_bad_input_size():
    with pytest.raises(ValueError, match="divisible"):
        create_model("cnn", input_size=30)


def test_pool_then_scale_is_exactly_scale_then_pool():
    """The blocks reweight after pooling: identical to the reference order (SE before the pool)."""
    torch.manual_seed(1)
    m = create_model("se_cnn").eval()
    x = torch.randn(8, 3, 32, 32)
    h = x
    for b in m.blocks:                                  # the reference order, written out
        a = b.relu(b.bn(b.conv(h)))
        h = b.pool(b.se(a))
    assert torch.equal(m.head(h), m(x))
    m.train()
    torch.manual_seed(2)
    out = m(x)
    out.sum().backward()
    assert all(p.grad is not None for p in m.parameters())


def test_se_weights_follow_the_formula_by_hand():
    """w = sigmoid(W2 relu(W1 mean_hw(x))), computed here from the weights, not by the block itself."""
    import torch.nn.functional as F
    from sedeploy.models.se import SEBlock
    torch.manual_seed(0)
    b = SEBlock(32, 16)
    x = torch.randn(3, 32, 5, 7)
    s = x.mean((2, 3))
    expected = torch.sigmoid(F.linear(F.relu(F.linear(s, b.fc1.weight)), b.fc2.weight))
    out, w = b.forward_with_weights(x)
    torch.testing.assert_close(w, expected)
    torch.testing.assert_close(out, x * expected[:, :, None, None])
    # a literal case: C = 16, r = 16 (one hidden unit), fc1 = 1/16, fc2 = 1, constant input c
    lit = SEBlock(16, 16)
    with torch.no_grad():
        lit.fc1.weight.fill_(1 / 16)
        lit.fc2.weight.fill_(1.0)
    for c, want in ((2.0, 1 / (1 + math.exp(-2.0))), (-3.0, 0.5)):       # relu(-3) = 0 -> sigmoid(0)
        w = lit.weights(torch.full((1, 16, 4, 4), c))
        torch.testing.assert_close(w, torch.full((1, 16), want))
