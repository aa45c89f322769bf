"""Real PyTorch models of every recurrent layer variant and the feed-forward layers the threads use."""

from __future__ import annotations

import torch
from torch import nn


class Sequence(nn.Module):
    """A recurrent layer followed by a Linear head on every step."""

    def __init__(self, layer: nn.Module, width: int) -> None:
        super().__init__()
        self.rnn = layer
        self.head = nn.Linear(width, 2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y, _ = self.rnn(x)
        return self.head(y)


class LstmWithState(nn.Module):
    """Initial states are inputs and the final states are outputs."""

    def __init__(self) -> None:
        super().__init__()
        self.lstm = nn.LSTM(3, 5, num_layers=2, batch_first=True)

    def forward(self, x: torch.Tensor, h0: torch.Tensor, c0: torch.Tensor) -> tuple[torch.Tensor, ...]:
        y, (h, c) = self.lstm(x, (h0, c0))
        return y, h, c


class Maxout(nn.Module):
    def __init__(self, features: int, units: int, pieces: int) -> None:
        super().__init__()
        self.linear = nn.Linear(features, units * pieces)
        self.units, self.pieces = units, pieces

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.linear(x).view(-1, self.units, self.pieces).max(dim=-1).values


class FeedForward(nn.Module):
    """Linear, maxout, PReLU, tanh, sigmoid and softmax in one MLP."""

    def __init__(self) -> None:
        super().__init__()
        self.maxout = Maxout(6, 8, 3)
        self.hidden = nn.Linear(8, 8)
        self.prelu = nn.PReLU(8)
        self.out = nn.Linear(8, 4)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = torch.tanh(self.maxout(x))
        h = self.prelu(self.hidden(h)) * torch.sigmoid(h)
        return torch.softmax(self.out(h), dim=-1)


def recurrent_variants() -> dict[str, tuple[nn.Module, tuple[int | None, ...]]]:
    """name -> (model, input shape with None for dynamic dims)."""
    torch.manual_seed(0)
    return {
        "lstm-stacked-bidirectional-batch-first": (
            Sequence(nn.LSTM(3, 5, num_layers=2, bidirectional=True, batch_first=True), 10), (None, None, 3)),
        "gru-stacked-bidirectional-seq-first": (
            Sequence(nn.GRU(3, 4, num_layers=2, bidirectional=True), 8), (None, None, 3)),
        "rnn-relu-no-bias": (Sequence(nn.RNN(3, 6, nonlinearity="relu", bias=False, batch_first=True), 6),
                             (None, None, 3)),
        "rnn-tanh-bidirectional": (Sequence(nn.RNN(3, 4, bidirectional=True, batch_first=True), 8), (None, None, 3)),
    }


class CellLoop(nn.Module):
    """An nn.LSTMCell/GRUCell/RNNCell stepped over x.size(1) in Python; returns every step's h and the last state."""

    def __init__(self, cell: nn.Module, width: int) -> None:
        super().__init__()
        self.cell = cell
        self.width = width

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        h = torch.zeros(x.size(0), self.width)
        c = torch.zeros(x.size(0), self.width)
        steps = []
        for t in range(x.size(1)):
            if isinstance(self.cell, nn.LSTMCell):
                h, c = self.cell(x[:, t], (h, c))
            else:
                h = self.cell(x[:, t], h)
            steps.append(h)
        return torch.stack(steps, dim=1), h
