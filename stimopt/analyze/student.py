"""The student of the data-pruning curricula (seed paper, A.1.3): a small CNN trained from scratch
to predict one neuron's responses, with Adam and early stopping on a validation set.

The paper gives "a 5-layer CNN, 100 filters per layer" and nothing more; stimopt's student is
``layers`` blocks of conv 3x3 (the first 5x5) -> BatchNorm -> ReLU with ``filters`` channels,
stride 2 in the first and every second block after it, then a linear read-out of the flattened
last map (every position, so a spatial receptive field can be learned).
"""
from __future__ import annotations

import numpy as np
import torch
from torch import nn


class Student(nn.Module):
    def __init__(self, image_size: int, layers: int = 5, filters: int = 100):
        super().__init__()
        blocks, c_in, size = [], 3, int(image_size)
        for i in range(int(layers)):
            stride = 2 if (i % 2 == 0 and size >= 4) else 1
            k = 5 if i == 0 else 3
            blocks += [nn.Conv2d(c_in, int(filters), k, stride=stride, padding=k // 2, bias=False),
                       nn.BatchNorm2d(int(filters)), nn.ReLU()]
            c_in, size = int(filters), (size + 2 * (k // 2) - k) // stride + 1
        self.body = nn.Sequential(*blocks)
        self.head = nn.Linear(c_in * size * size, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.body(x).flatten(1))[:, 0]


def r2(pred: np.ndarray, true: np.ndarray) -> float:
    true = np.asarray(true, np.float64)
    sst = float(((true - true.mean()) ** 2).sum())
    return float("nan") if sst <= 0 else 1.0 - float(((np.asarray(pred, np.float64) - true) ** 2).sum()) / sst


def _predict(model, x: torch.Tensor, batch: int = 256) -> np.ndarray:
    model.eval()
    with torch.no_grad():
        return torch.cat([model(x[s:s + batch]) for s in range(0, len(x), batch)]).double().numpy()


def train_student(x_train, y_train, x_val, y_val, *, layers: int = 5, filters: int = 100, lr: float = 1e-4,
                  batch_size: int = 64, epochs: int = 30, patience: int = 5, seed: int = 0):
    """A student fitted to (x_train [N,3,S,S], y_train [N]) from scratch; early stopping on the
    validation R^2 (the best epoch's weights are kept). Targets are z-scored on the training set.
    Returns (predict(x) -> responses, info: epochs run, best epoch, validation R^2)."""
    torch.manual_seed(int(seed))
    gen = torch.Generator().manual_seed(int(seed))
    x_train = torch.as_tensor(x_train, dtype=torch.float32)
    x_val = torch.as_tensor(x_val, dtype=torch.float32)
    mu, sd = float(np.mean(y_train)), float(np.std(y_train)) or 1.0
    y = torch.as_tensor((np.asarray(y_train, np.float64) - mu) / sd, dtype=torch.float32)
    model = Student(x_train.shape[-1], layers, filters)
    opt = torch.optim.Adam(model.parameters(), lr=float(lr))
    best, best_state, best_epoch, wait, epoch = -np.inf, None, 0, 0, 0
    for epoch in range(1, int(epochs) + 1):
        model.train()
        perm = torch.randperm(len(x_train), generator=gen)
        for s in range(0, len(perm), int(batch_size)):
            b = perm[s:s + int(batch_size)]
            if len(b) < 2:  # BatchNorm needs two samples
                continue
            opt.zero_grad()
            loss = torch.mean((model(x_train[b]) - y[b]) ** 2)
            loss.backward()
            opt.step()
        score = r2(_predict(model, x_val) * sd + mu, y_val)
        if score > best:
            best, best_epoch, wait = score, epoch, 0
            best_state = {k: v.detach().clone() for k, v in model.state_dict().items()}
        else:
            wait += 1
            if wait >= int(patience):
                break
    if best_state is not None:
        model.load_state_dict(best_state)

    def predict(x):
        return _predict(model, torch.as_tensor(x, dtype=torch.float32)) * sd + mu

    return predict, {"epochs": epoch, "best_epoch": best_epoch, "val_r2": float(best)}
