"""The numpy few-shot probe against torch (nn.Linear + torch.optim.Adam, the authors' loop) and by hand."""

from __future__ import annotations

import numpy as np
import pytest

from clap_edge.core.errors import ClapEdgeError
from clap_edge.core.probe import ProbeConfig, epoch_batches, fit_probe, l2_normalize, linear_init


def _data(n_per_class=6, d=16, c=4, noise=1.5, seed=0):
    rng = np.random.default_rng(seed)
    y = np.repeat(np.arange(c), n_per_class)
    return rng.normal(size=(c, d))[y] + noise * rng.normal(size=(len(y), d)), y


def _authors_loop_in_torch(x, y, c, config: ProbeConfig):
    """``training_classifier_with_img`` of YichaoCai1/CLAP (main/evaluate.py) in torch, float64, with the
    init and batch order drawn as the probe draws them (torch's own RNG cannot be replayed in numpy)."""
    torch = pytest.importorskip("torch")
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # tiny products: threads only add hand-offs on a loaded machine
    try:
        return _torch_loop(torch, x, y, c, config)
    finally:
        torch.set_num_threads(threads)


def _torch_loop(torch, x, y, c, config):
    rng = np.random.default_rng(config.seed)
    w0, b0 = linear_init(x.shape[1], c, rng)
    classifier = torch.nn.Linear(x.shape[1], c).double()
    with torch.no_grad():
        classifier.weight.copy_(torch.from_numpy(w0))
        classifier.bias.copy_(torch.from_numpy(b0))
    optimizer = torch.optim.Adam(classifier.parameters(), lr=config.lr, weight_decay=config.weight_decay)
    loss_func = torch.nn.CrossEntropyLoss()
    feats = torch.nn.functional.normalize(torch.from_numpy(np.asarray(x, dtype=np.float64)))
    labels = torch.from_numpy(y)
    best_loss, stop_count, best, epochs = float("inf"), 0, None, 0
    for _ in range(config.epochs):
        epochs += 1
        losses = []
        for idx in epoch_batches(len(y), config.batch_size, rng):
            optimizer.zero_grad()
            loss = loss_func(classifier(feats[idx]), labels[idx])
            losses.append(loss.item())
            loss.backward()
            optimizer.step()
        ave_loss = sum(losses) / len(losses)
        if ave_loss < best_loss - config.min_delta:
            best_loss = ave_loss
            best = (classifier.weight.detach().numpy().copy(), classifier.bias.detach().numpy().copy())
        else:
            stop_count += 1
            if stop_count >= config.patience:
                break
    return best, epochs


@pytest.mark.parametrize("config", [ProbeConfig(seed=3), ProbeConfig(seed=1, batch_size=7, weight_decay=0.01),
                                    ProbeConfig(seed=2, epochs=25, min_delta=0.0)],
                         ids=["authors", "small-batches-wd", "epoch-cap"])
def test_linear_probe_equals_torch_adam_loop(config):
    x, y = _data()
    probe = fit_probe(x, y, 4, config)
    (w, b), epochs = _authors_loop_in_torch(x, y, 4, config)
    assert probe.epochs_run == epochs
    assert 1 < probe.best_epoch <= epochs
    np.testing.assert_allclose(probe.weight, w, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(probe.bias, b, rtol=1e-5, atol=1e-6)


def test_linear_probe_is_seeded_and_learns():
    x, y = _data(n_per_class=10, noise=0.5)
    a, b, other = (fit_probe(x, y, 4, ProbeConfig(seed=s)) for s in (5, 5, 6))
    np.testing.assert_array_equal(a.weight, b.weight)
    assert not np.array_equal(a.weight, other.weight)
    assert (a.predict(x) == y).mean() == 1.0  # well separated: the training shots are all right
    assert a.losses[a.best_epoch - 1] == a.best_loss < a.losses[0]
    np.testing.assert_allclose(a.logits(x * 7.0), a.logits(x))  # features are normalised first


def test_prototypes_are_normalised_class_means():
    x, y = _data()
    probe = fit_probe(x, y, 4, ProbeConfig(method="prototype"))
    assert probe.bias is None
    for c in range(4):
        mean = (x[y == c] / np.linalg.norm(x[y == c], axis=1, keepdims=True)).mean(axis=0)
        np.testing.assert_allclose(probe.weight[c], mean / np.linalg.norm(mean), atol=1e-6)
    np.testing.assert_allclose(probe.logits(x), l2_normalize(x) @ probe.weight.T.astype(np.float64), atol=1e-12)


@pytest.mark.parametrize("labels, match", [([0, 0, 1, 1], "classes \\[2\\] have no example"),
                                           ([0, 1, 2, 3], "labels must lie"), ([0, 1], "N labels")])
def test_bad_input_is_one_clear_error(labels, match):
    x = np.ones((4, 3)) if len(labels) != 2 else np.ones((3, 3))
    with pytest.raises(ClapEdgeError, match=match):
        fit_probe(x, np.asarray(labels), 3)
