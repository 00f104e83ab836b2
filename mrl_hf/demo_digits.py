"""`mrl-hf demo --digits`: MRL vs a full-dim-only model on scikit-learn's bundled digits, in seconds.

The same small MLP encoder is trained twice: with a Matryoshka head on every nested size (MRL) and with one
head at the full size only (the paper's fixed-feature model, FF). Each is then judged at every size m by
1-nearest-neighbour accuracy on the first m features; MRL is also judged by its own head at m. Slicing the
FF model is the paper's "random feature selection" baseline.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn
from tqdm.auto import tqdm

from .heads import MatryoshkaHead
from .losses import MatryoshkaCrossEntropyLoss
from .nesting import halving_nesting_list


def load_digits_tensors(seed: int = 0):
    try:
        from sklearn.datasets import load_digits
    except ImportError as err:
        raise ImportError("The digits demo needs scikit-learn: pip install 'mrl-hf[demo]'.") from err
    x, y = load_digits(return_X_y=True)
    x = torch.tensor(x, dtype=torch.float32) / 16.0
    y = torch.tensor(y)
    order = torch.randperm(len(y), generator=torch.Generator().manual_seed(seed))
    split = int(0.8 * len(y))
    return x[order[:split]], y[order[:split]], x[order[split:]], y[order[split:]]


class DigitsEncoder(nn.Module):
    def __init__(self, in_features: int, nesting_list: list[int], num_classes: int = 10):
        super().__init__()
        dim = nesting_list[-1]
        self.body = nn.Sequential(nn.Linear(in_features, 256), nn.ReLU(), nn.Linear(256, dim))
        self.head = MatryoshkaHead(nesting_list, num_classes)

    def forward(self, x):
        return self.body(x)


def train_encoder(x, y, nesting_list, epochs: int, seed: int, progress: tqdm | None = None) -> DigitsEncoder:
    # A few hundred full-batch steps on 1,437 vectors: a Trainer would only add start-up time here.
    torch.manual_seed(seed)
    model = DigitsEncoder(x.shape[1], nesting_list)
    opt = torch.optim.Adam(model.parameters(), lr=3e-3, weight_decay=1e-4)
    loss_fct = MatryoshkaCrossEntropyLoss()
    for _ in range(epochs):
        loss = model.head.loss(model(x), y, loss_fct).loss
        opt.zero_grad()
        loss.backward()
        opt.step()
        if progress is not None:
            progress.update(1)
    return model.eval()


def one_nn_accuracy(train_emb, train_y, test_emb, test_y) -> float:
    sims = F.normalize(test_emb, dim=1) @ F.normalize(train_emb, dim=1).T
    return (train_y[sims.argmax(1)] == test_y).float().mean().item()


def run(epochs: int = 300, seed: int = 0) -> list[dict]:
    """Train both models and return one row per dim with the accuracies (in %)."""
    x_train, y_train, x_test, y_test = load_digits_tensors(seed)
    dim = 64
    nesting = halving_nesting_list(dim, min_dim=2)
    with tqdm(total=2 * epochs, desc="training MRL and full-dim models", unit="step") as bar:
        mrl = train_encoder(x_train, y_train, nesting, epochs, seed, bar)
        ff = train_encoder(x_train, y_train, [dim], epochs, seed, bar)
    rows = []
    with torch.no_grad():
        mrl_train, mrl_test = mrl(x_train), mrl(x_test)
        ff_train, ff_test = ff(x_train), ff(x_test)
        head_logits = mrl.head(mrl_test)
        for m, logits in zip(nesting, head_logits):
            rows.append({
                "dim": m,
                "MRL head": 100 * (logits.argmax(1) == y_test).float().mean().item(),
                "MRL 1-NN": 100 * one_nn_accuracy(mrl_train[:, :m], y_train, mrl_test[:, :m], y_test),
                "full-dim model sliced, 1-NN": 100 * one_nn_accuracy(ff_train[:, :m], y_train, ff_test[:, :m], y_test),
            })
    return rows


def format_table(rows: list[dict]) -> str:
    headers = list(rows[0])
    cells = [headers] + [[str(r["dim"])] + [f"{r[h]:.1f}" for h in headers[1:]] for r in rows]
    widths = [max(len(c[i]) for c in cells) for i in range(len(headers))]
    lines = ["  ".join(c.rjust(w) for c, w in zip(row, widths)) for row in cells]
    lines.insert(1, "  ".join("-" * w for w in widths))
    return "\n".join(lines)
