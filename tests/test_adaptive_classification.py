"""AdaptiveClassifier: thresholds, routing and cost accounting on logits with known confidences."""
import numpy as np
import pytest
import torch

from mrl_hf.adaptive_classification import AdaptiveClassifier


def synthetic_logits(n=2000, seed=0):
    """Dim 4 is right and confident on 'easy' inputs (60%), unsure and often wrong on the rest; dim 16 is
    always right."""
    rng = np.random.default_rng(seed)
    labels = rng.integers(0, 3, n)
    easy = rng.random(n) < 0.6
    logits = np.zeros((2, n, 3), dtype=np.float32)
    small_pred = np.where(easy | (rng.random(n) < 0.3), labels, (labels + 1) % 3)
    logits[0, np.arange(n), small_pred] = np.where(easy, 5.0, 0.5)  # softmax ~0.99 vs ~0.45
    logits[1, np.arange(n), labels] = 1.0
    return logits, labels


def test_learns_a_threshold_that_keeps_full_accuracy_at_lower_cost():
    logits, labels = synthetic_logits()
    clf = AdaptiveClassifier([4, 16]).fit(logits[:, :1000], labels[:1000])
    # smallest grid threshold above the unsure confidence (~0.45) and at most the easy one (~0.99)
    unsure = np.exp(0.5) / (np.exp(0.5) + 2)
    assert unsure < clf.thresholds[0] <= unsure + 0.01 and clf.thresholds[-1] == 0
    result = clf.evaluate(logits[:, 1000:], labels[1000:])
    assert result.accuracy == 100.0 and result.full_dim_accuracy == 100.0
    easy_share = result.dim_fractions[4]
    assert 0.55 < easy_share < 0.65
    assert result.expected_dim == pytest.approx(4 * easy_share + 16 * (1 - easy_share))
    assert result.expected_cost == pytest.approx(4 * easy_share + 20 * (1 - easy_share))  # MRL: 4 + 16
    efficient = AdaptiveClassifier([4, 16], efficient=True).fit(logits[:, :1000], labels[:1000])
    assert efficient.evaluate(logits[:, 1000:], labels[1000:]).expected_cost == pytest.approx(result.expected_dim)
    preds, dims = clf.predict(tuple(torch.tensor(x) for x in logits))
    assert np.array_equal(preds, labels) and set(dims) == {4, 16}


def test_bad_input():
    logits, labels = synthetic_logits(20)
    with pytest.raises(RuntimeError, match="not fitted"):
        AdaptiveClassifier([4, 16]).predict(logits)
    with pytest.raises(ValueError, match=r"shape \(\|M\|=3, N, num_classes\)"):
        AdaptiveClassifier([4, 8, 16]).fit(logits, labels)
    with pytest.raises(ValueError, match=r"labels must be 20 integer class ids, one per row \(shape \(20,\)\)"):
        AdaptiveClassifier([4, 16]).fit(logits, labels[:5])
    with pytest.raises(ValueError, match=r"labels must be 20 integer class ids.*dtype <U"):  # used to score 0%
        AdaptiveClassifier([4, 16]).fit(logits, [f"class {y}" for y in labels])
    with pytest.raises(ValueError, match="num_thresholds=1 must be an int >= 2"):
        AdaptiveClassifier([4, 16], num_thresholds=1)


def test_a_small_head_that_is_sure_and_wrong_can_be_skipped():
    # float32 softmax of a 20-logit lead is exactly 1.0: no threshold in [0, 1] stops such inputs at dim 4,
    # so the cascade needs "never answer here" (inf) to reach the largest head's accuracy
    n = 100
    labels = np.zeros(n, dtype=int)
    logits = np.zeros((2, n, 3), np.float32)
    logits[0, :50, 0] = 20.0  # sure and right
    logits[0, 50:, 1] = 40.0  # surer and wrong
    logits[1, :, 0] = 3.0  # always right
    clf = AdaptiveClassifier([4, 16]).fit(logits, labels)
    assert clf.thresholds[0] == np.inf
    result = clf.evaluate(logits, labels)
    assert result.accuracy == 100.0 and result.dim_fractions == {4: 0.0, 16: 1.0}


def test_nonfinite_logits_are_refused_not_scored():
    from mrl_hf.evaluation.classification import oracle_accuracy, per_dim_accuracy

    labels = np.zeros(4, dtype=int)
    logits = np.zeros((2, 4, 3), np.float32)
    logits[:, :, 1] = 5.0
    logits[:, 2, 0] = np.nan  # argmax would pick class 0: "right"
    with pytest.raises(ValueError, match=r"nested_logits has NaN or inf values for input\(s\) 2 "):
        AdaptiveClassifier([4, 8]).fit(logits, labels)
    for metric in (per_dim_accuracy, oracle_accuracy):
        with pytest.raises(ValueError, match=r"input\(s\) 2 "):
            metric(logits, labels, [4, 8])
        with pytest.raises(ValueError, match=r"holds no inputs"):  # was a numpy reshape error
            metric(logits[:, :0], labels[:0], [4, 8])
    with pytest.raises(ValueError, match=r"holds no inputs"):
        AdaptiveClassifier([4, 8]).fit(logits[:, :0], labels[:0])
    huge = np.zeros((2, 2, 3))
    huge[:, :, 0] = 1e308  # finite; their float64 sum is not
    assert AdaptiveClassifier([4, 8]).fit(huge, [0, 0]).evaluate(huge, [0, 0]).accuracy == 100.0


def test_labels_and_classes_that_do_not_fit_the_logits_are_refused():
    rng = np.random.default_rng(0)
    logits, labels = rng.normal(size=(2, 50, 3)), rng.integers(0, 3, 50)
    with pytest.raises(ValueError, match=r"class indices in 0..2 .* got values in 7..7"):
        AdaptiveClassifier([2, 4]).fit(logits, np.full(50, 7))  # fitted thresholds [0, 0] and 0% silently
    fitted = AdaptiveClassifier([2, 4]).fit(logits, labels)
    with pytest.raises(ValueError, match="logits have 5 classes, but the thresholds were fitted on logits of 3"):
        fitted.evaluate(rng.normal(size=(2, 50, 5)), labels)
    with pytest.raises(ValueError, match="logits have 5 classes, but the thresholds were fitted on logits of 3"):
        fitted.predict(rng.normal(size=(2, 50, 5)))
    del fitted.num_classes  # a classifier pickled before the class count was recorded still evaluates
    assert fitted.evaluate(logits, labels).accuracy >= 0
