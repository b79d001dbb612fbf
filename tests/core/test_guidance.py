import torch

from mmdiff.core.guidance import CFGDenoiser, DynamicThreshold, drop_labels, dynamic_threshold, quantile, rescale_guidance


class Fake:
    """D(x, sigma, labels) = x * sigma + label (a different answer per label); counts calls."""

    def __init__(self):
        self.calls = 0

    def __call__(self, x, sigma, labels):
        self.calls += 1
        lab = torch.zeros(x.shape[0]) if labels is None else labels.float()
        return x * sigma.view(-1, 1) + lab.view(-1, 1)


def test_scale_one_is_the_conditional_model_in_one_call():
    d, x, s, y = Fake(), torch.randn(4, 3), torch.rand(4), torch.tensor([1, 2, 3, 4])
    out = CFGDenoiser(d, y, 1.0, null_label=10)(x, s)
    assert torch.equal(out, d(x, s, y)) and d.calls == 2


def test_scale_zero_is_the_unconditional_model():
    d, x, s, y = Fake(), torch.randn(4, 3), torch.rand(4), torch.tensor([1, 2, 3, 4])
    assert torch.equal(CFGDenoiser(d, y, 0.0, null_label=10)(x, s), d(x, s, torch.full((4,), 10)))


def test_guided_estimate_extrapolates_from_unconditional_to_conditional():
    d, x, s, y = Fake(), torch.randn(4, 3), torch.rand(4), torch.tensor([1, 2, 3, 4])
    w = 3.0
    out = CFGDenoiser(d, y, w, null_label=10)(x, s)
    cond, uncond = d(x, s, y), d(x, s, torch.full((4,), 10))
    assert torch.allclose(out, uncond + w * (cond - uncond))
    assert d.calls == 3  # one batched call for the guided estimate, two for the reference


def test_unconditional_sampling_passes_no_labels():
    d, x, s = Fake(), torch.randn(2, 3), torch.rand(2)
    assert torch.equal(CFGDenoiser(d, None, 4.0, null_label=10)(x, s), x * s.view(-1, 1))


def test_label_dropout_rate_and_null_label():
    g = torch.Generator().manual_seed(0)
    y = torch.zeros(100_000, dtype=torch.long)
    out = drop_labels(y, 0.1, null_label=10, generator=g)
    assert set(out.unique().tolist()) == {0, 10}
    assert abs((out == 10).float().mean().item() - 0.1) < 0.005
    assert drop_labels(y, 0.0, 10) is y


# --- guidance rescale, guidance interval, dynamic thresholding -----------------------------------


class Spread:
    """D(x, sigma, labels) = x * sigma * (1 + label) + label: each label a different std; counts calls."""

    def __init__(self):
        self.calls = 0

    def __call__(self, x, sigma, labels):
        self.calls += 1
        lab = labels.to(x.dtype).view(-1, 1, 1)
        return x * sigma.view(-1, 1, 1) * (1 + lab) + lab


def batch(b=4):
    g = torch.Generator().manual_seed(0)
    x = torch.randn(b, 2, 5, generator=g, dtype=torch.float64)
    return x, torch.rand(b, generator=g, dtype=torch.float64) + 0.5, torch.arange(1, b + 1)


def test_rescale_zero_is_plain_cfg():
    d, (x, s, y) = Spread(), batch()
    assert torch.equal(CFGDenoiser(d, y, 4.0, null_label=0, rescale=0.0)(x, s), CFGDenoiser(d, y, 4.0, null_label=0)(x, s))
    guided = torch.randn(3, 4, dtype=torch.float64)
    assert torch.equal(rescale_guidance(guided, torch.randn(3, 4, dtype=torch.float64), 0.0), guided)


def test_full_rescale_gives_the_conditional_std_per_sample():
    d, (x, s, y) = Spread(), batch()
    out = CFGDenoiser(d, y, 5.0, null_label=0, rescale=1.0)(x, s)
    cond = d(x, s, y)
    assert torch.allclose(out.std(dim=(1, 2)), cond.std(dim=(1, 2)), rtol=1e-12, atol=0)
    plain = CFGDenoiser(d, y, 5.0, null_label=0)(x, s)
    assert not torch.allclose(plain.std(dim=(1, 2)), cond.std(dim=(1, 2)), rtol=1e-3)  # the test has teeth


def test_partial_rescale_follows_lin_et_al():
    """Lin et al. 2023, Sec. 3.4: x_final = phi * x_cfg * std(x_pos) / std(x_cfg) + (1 - phi) * x_cfg."""
    d, (x, s, y) = Spread(), batch()
    w, phi = 3.0, 0.7
    cond, uncond = d(x, s, y), d(x, s, torch.zeros_like(y))
    cfg = uncond + w * (cond - uncond)
    ratio = torch.stack([cond[i].std() / cfg[i].std() for i in range(len(x))]).view(-1, 1, 1)
    expected = phi * cfg * ratio + (1 - phi) * cfg
    assert torch.allclose(CFGDenoiser(d, y, w, null_label=0, rescale=phi)(x, s), expected, rtol=1e-12, atol=1e-12)


def test_scale_one_stays_one_call_with_rescale_and_interval():
    d, (x, s, y) = Spread(), batch()
    out = CFGDenoiser(d, y, 1.0, null_label=0, rescale=0.7, interval=(0.1, 10.0))(x, s)
    assert d.calls == 1 and torch.equal(out, d(x, s, y))


def test_outside_the_interval_is_the_conditional_model_in_one_call():
    d, (x, _, y) = Spread(), batch()
    guided = CFGDenoiser(d, y, 4.0, null_label=0, rescale=0.5, interval=(1.0, 2.0))
    for level in [0.5, 1.0, 2.5]:  # below, at the lower end (excluded: the interval is (lo, hi]), above
        s = torch.full((4,), level, dtype=torch.float64)
        d.calls = 0
        out = guided(x, s)
        assert d.calls == 1 and torch.equal(out, d(x, s, y))


def test_inside_the_interval_is_guided():
    d, (x, _, y) = Spread(), batch()
    for level in [1.5, 2.0]:  # inside, at the upper end (included)
        s = torch.full((4,), level, dtype=torch.float64)
        assert torch.equal(CFGDenoiser(d, y, 4.0, null_label=0, interval=(1.0, 2.0))(x, s),
                           CFGDenoiser(d, y, 4.0, null_label=0)(x, s))


def test_interval_is_decided_per_sample():
    d, (x, _, y) = Spread(), batch()
    s = torch.tensor([0.5, 1.5, 3.0, 2.0], dtype=torch.float64)
    out = CFGDenoiser(d, y, 4.0, null_label=0, interval=(1.0, 2.0))(x, s)
    plain, cond = CFGDenoiser(d, y, 4.0, null_label=0)(x, s), d(x, s, y)
    for i, inside in enumerate([False, True, False, True]):
        assert torch.allclose(out[i], (plain if inside else cond)[i], rtol=1e-15, atol=0)


def test_dynamic_threshold_leaves_data_in_range_alone():
    x0 = torch.tensor([[0.5, -0.2, 0.9, 0.1], [-1.0, 0.3, 1.0, 0.0]], dtype=torch.float64)
    assert torch.equal(dynamic_threshold(x0, 0.995), x0)


def test_dynamic_threshold_exact_numbers():
    x0 = torch.tensor([[0.0, 1.0, 2.0, -4.0],    # |x0| sorted 0 1 2 4: the 0.5-quantile is 1.5
                       [0.1, 0.2, -0.3, 5.0],    # quantile 0.25 <= 1: s = 1, a static clip
                       [0.5, -3.0, 3.0, 3.0]],   # quantile 3: s = 3
                      dtype=torch.float64)
    out = dynamic_threshold(x0, 0.5)
    expected = torch.tensor([[0.0, 2 / 3, 1.0, -1.0], [0.1, 0.2, -0.3, 1.0], [0.5 / 3, -1.0, 1.0, 1.0]],
                            dtype=torch.float64)
    assert torch.allclose(out, expected, rtol=1e-15, atol=0)
    # percentile 1 is the max: every sample rescaled by its largest magnitude (when that exceeds 1)
    assert torch.allclose(dynamic_threshold(x0, 1.0)[0], x0[0] / 4, rtol=1e-15, atol=0)
    # a different bound: data in [-2, 2]
    assert torch.allclose(dynamic_threshold(x0[:1], 1.0, bound=2.0), x0[:1] / 4 * 2, rtol=1e-15, atol=0)


def test_quantile_matches_torch_quantile():
    v = torch.randn(3, 1001, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    for q in [0.0, 0.3, 0.995, 1.0]:
        assert torch.allclose(quantile(v, q), torch.quantile(v, q, dim=1), rtol=1e-13, atol=1e-13)


def test_dynamic_threshold_wraps_guided_and_conditional_denoisers():
    d, (x, s, y) = Spread(), batch()
    x = x * 5
    guided = CFGDenoiser(d, y, 3.0, null_label=0)
    assert torch.equal(DynamicThreshold(guided, 0.9)(x, s), dynamic_threshold(guided(x, s), 0.9))
    assert torch.equal(DynamicThreshold(d, 0.9)(x, s, y), dynamic_threshold(d(x, s, y), 0.9))  # labels pass through
    out = DynamicThreshold(guided, 0.9)(x, s)
    assert out.abs().max() <= 1.0 and (out.abs() == 1.0).any()


# --- autoguidance (Karras et al. 2024) --------------------------------------------------------------

def test_autoguidance_guides_away_from_the_weaker_model_with_the_same_labels():
    main_calls, guide_calls = [], []

    def main(x, sigma, labels=None):
        main_calls.append(labels)
        return x * 2 + (0 if labels is None else labels.view(-1, 1).float())

    def weak(x, sigma, labels=None):
        guide_calls.append(labels)
        return x * 0.5

    x, sigma, labels = torch.randn(3, 4), torch.ones(3), torch.tensor([0, 1, 2])
    out = CFGDenoiser(main, labels, 2.5, null_label=3, guide=weak)(x, sigma)
    assert torch.allclose(out, weak(x, sigma) + 2.5 * (main(x, sigma, labels) - weak(x, sigma)))
    assert torch.equal(guide_calls[0], labels) and torch.equal(main_calls[0], labels)  # the null label is unused
    # an unconditional model is guided too
    assert torch.allclose(CFGDenoiser(main, None, 2.0, guide=weak)(x, sigma), 2 * (2 * x) - x * 0.5)
    # scale 1 is the main model alone; outside the interval too
    assert torch.equal(CFGDenoiser(main, labels, 1.0, guide=weak)(x, sigma), main(x, sigma, labels))
    assert torch.equal(CFGDenoiser(main, labels, 3.0, guide=weak, interval=(2.0, 5.0))(x, sigma),
                       main(x, sigma, labels))


# --- captions: the unconditional branch gets the empty caption, or a negative prompt ---------------


class Captioned:
    """D(x, sigma, labels, tokens) = x * sigma + the mean token id of each row (a different answer per caption)."""

    def __call__(self, x, sigma, labels, tokens):
        assert labels is None
        return x * sigma.view(-1, 1) + tokens.float().mean(1, keepdim=True)


def test_negative_prompt_is_the_unconditional_branch_replaced():
    from mmdiff.generate import Guidance, prompt_conditions
    from mmdiff.models.text import ByteTokenizer
    d, x, s, w = Captioned(), torch.randn(4, 3), torch.rand(4), 3.0
    tok = ByteTokenizer(16)
    index = torch.tensor([0, 0, 1, 1])
    conditions, null = prompt_conditions(tok, ["a thin four", "a seven"], index, negative="thick")
    out = Guidance(w).bind(d, None, None, conditions, null)(x, s)
    cond = d(x, s, None, tok.encode(["a thin four", "a seven"])[index])
    uncond = d(x, s, None, tok.encode(["thick"] * 4))
    assert torch.allclose(out, uncond + w * (cond - uncond))
    # without one, the unconditional branch is the empty caption, which is a different answer
    conditions, null = prompt_conditions(tok, ["a thin four", "a seven"], index)
    plain = Guidance(w).bind(d, None, None, conditions, null)(x, s)
    empty = d(x, s, None, tok.encode([""] * 4))
    assert torch.allclose(plain, empty + w * (cond - empty)) and not torch.allclose(plain, out)
    # scale 0: the negative prompt's branch alone; scale 1: the prompt's alone
    assert torch.equal(Guidance(0.0).bind(d, None, None, *prompt_conditions(tok, ["a"], index[:1] * 0, "thick"))(
        x[:1], s[:1]), d(x[:1], s[:1], None, tok.encode(["thick"])))


def test_caption_dropout_rate_and_empty_caption():
    from mmdiff.core.guidance import drop_captions
    from mmdiff.models.text import ByteTokenizer
    tok = ByteTokenizer(8)
    tokens, empty = tok.encode(["seven"]).expand(50_000, -1), tok.encode([""])[0]
    out = drop_captions(tokens, 0.2, empty, torch.Generator().manual_seed(0))
    dropped = (out == empty).all(1)
    assert ((out == tokens).all(1) | dropped).all()
    assert abs(dropped.float().mean().item() - 0.2) < 0.01
    assert drop_captions(tokens, 0.0, empty) is tokens
