"""A corpus of real-world PyTorch recurrent models (small sizes), each converted by modelbridge and checked
independently of the converter's own proof: fused ops only (no Loop/Scan anywhere, subgraphs included),
parity on every output at 1e-4 over several batch sizes and lengths, and per-gate blocks equal to the
module's parameters.  Also: every corpus model that plain torch.onnx converts, modelbridge converts too.
"""

from __future__ import annotations

import io
import warnings
from collections.abc import Callable, Iterator
from dataclasses import dataclass

import numpy as np
import onnx
import pytest
import torch
from torch import nn
from torch.nn.utils.rnn import pack_padded_sequence, pad_packed_sequence

from converters import convert, gates
from converters.parity import run_onnx
from converters.pytorch import TORCH_GATES
from converters.result import ConversionResult
from converters.specs import InputSpec

ATOL = 1e-4
SIZES = ((1, 2), (3, 7), (4, 11))  # (batch, length) pairs, none of them the traced one
VOCAB = 12
Feeds = Callable[[np.random.Generator, int, int], dict[str, np.ndarray]]


def _lengths(rng: np.random.Generator, batch: int, length: int, *, descending: bool = False) -> np.ndarray:
    """Mixed lengths; at length 7 every sequence is shorter than the padded batch (PyTorch pads to the longest)."""
    lengths = rng.integers(1, length + 1, size=batch)
    lengths[rng.integers(0, batch)] = length if length != 7 else length - 2
    lengths = np.minimum(lengths, length - 2) if length == 7 else lengths
    return np.sort(lengths)[::-1].copy() if descending else lengths


class SentimentPacked(nn.Module):
    """Embedding -> packed LSTM (unsorted batch) -> Linear on [last hidden state, max over padded steps].

    """

    def __init__(self) -> None:
        super().__init__()
        self.embedding = nn.Embedding(VOCAB, 6, padding_idx=0)
        self.lstm = nn.LSTM(6, 5, batch_first=True)
        self.classifier = nn.Linear(10, 3)

    def forward(self, tokens: torch.Tensor, lengths: torch.Tensor) -> torch.Tensor:
        packed = pack_padded_sequence(self.embedding(tokens), lengths, batch_first=True, enforce_sorted=False)
        output, (hidden, _) = self.lstm(packed)
        padded, _ = pad_packed_sequence(output, batch_first=True)
        return self.classifier(torch.cat([hidden[-1], padded.max(dim=1).values], dim=-1))


class PackedHiddenOnly(nn.Module):
    """The classic packed classifier reading only h_n: plain torch.onnx fails on it (both exporters)."""

    def __init__(self) -> None:
        super().__init__()
        self.embedding = nn.Embedding(VOCAB, 5)
        self.gru = nn.GRU(5, 4, num_layers=2, bidirectional=True, batch_first=True)
        self.classifier = nn.Linear(8, 2)

    def forward(self, tokens: torch.Tensor, lengths: torch.Tensor) -> torch.Tensor:
        packed = pack_padded_sequence(self.embedding(tokens), lengths, batch_first=True, enforce_sorted=False)
        _, hidden = self.gru(packed)
        return self.classifier(torch.cat([hidden[-2], hidden[-1]], dim=-1))


class PackedBiTagger(nn.Module):
    """Sorted packed batch, 2-layer bidirectional LSTM with dropout, padded back, a tag per step."""

    def __init__(self) -> None:
        super().__init__()
        self.embedding = nn.Embedding(VOCAB, 4)
        self.lstm = nn.LSTM(4, 3, num_layers=2, bidirectional=True, dropout=0.3, batch_first=True)
        self.tags = nn.Linear(6, 5)

    def forward(self, tokens: torch.Tensor, lengths: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        packed = pack_padded_sequence(self.embedding(tokens), lengths, batch_first=True, enforce_sorted=True)
        output, (_, cell) = self.lstm(packed)
        padded, _ = pad_packed_sequence(output, batch_first=True)
        return self.tags(padded), cell


class PackedGruSeqFirst(nn.Module):
    """Time-major packed GRU, padded back to the full input length (total_length)."""

    def __init__(self) -> None:
        super().__init__()
        self.gru = nn.GRU(3, 4)

    def forward(self, x: torch.Tensor, lengths: torch.Tensor) -> torch.Tensor:
        packed = pack_padded_sequence(x, lengths, enforce_sorted=False)
        output, _ = self.gru(packed)
        padded, _ = pad_packed_sequence(output, total_length=x.size(0))
        return padded


class BiGruTagger(nn.Module):
    """NER-style: Embedding -> bidirectional GRU -> LayerNorm -> Linear per token."""

    def __init__(self) -> None:
        super().__init__()
        self.embedding = nn.Embedding(VOCAB, 5)
        self.gru = nn.GRU(5, 4, bidirectional=True, batch_first=True)
        self.norm = nn.LayerNorm(8)
        self.out = nn.Linear(8, 4)

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        states, _ = self.gru(self.embedding(tokens))
        return torch.log_softmax(self.out(self.norm(states)), dim=-1)


class Seq2Seq(nn.Module):
    """Encoder LSTM's (h, c) start the decoder LSTM: two inputs, teacher-forced decoding."""

    def __init__(self) -> None:
        super().__init__()
        self.source_embedding = nn.Embedding(VOCAB, 4)
        self.target_embedding = nn.Embedding(VOCAB, 4)
        self.encoder = nn.LSTM(4, 6, num_layers=2, batch_first=True)
        self.decoder = nn.LSTM(4, 6, num_layers=2, batch_first=True)
        self.project = nn.Linear(6, VOCAB)

    def forward(self, source: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        _, state = self.encoder(self.source_embedding(source))
        decoded, _ = self.decoder(self.target_embedding(target), state)
        return self.project(decoded)


class Forecaster(nn.Module):
    """Time series: 3 stacked LSTM layers with dropout, Linear on the last step."""

    def __init__(self) -> None:
        super().__init__()
        self.lstm = nn.LSTM(2, 5, num_layers=3, dropout=0.2, batch_first=True)
        self.head = nn.Linear(5, 1)

    def forward(self, series: torch.Tensor) -> torch.Tensor:
        output, _ = self.lstm(series)
        return self.head(output[:, -1])


class ConvLstm(nn.Module):
    """Conv1d -> ReLU -> MaxPool1d feature extractor, then an LSTM and a classifier."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv1d(3, 6, kernel_size=3, padding=1)
        self.pool = nn.MaxPool1d(2, ceil_mode=True)
        self.lstm = nn.LSTM(6, 4, batch_first=True)
        self.out = nn.Linear(4, 2)

    def forward(self, signal: torch.Tensor) -> torch.Tensor:
        features = self.pool(torch.relu(self.conv(signal.transpose(1, 2)))).transpose(1, 2)
        _, (hidden, _) = self.lstm(features)
        return self.out(hidden[0])


class CharRnn(nn.Module):
    """Character model: Embedding -> 2-layer ReLU RNN -> tanh RNN -> log_softmax."""

    def __init__(self) -> None:
        super().__init__()
        self.embedding = nn.Embedding(VOCAB, 4)
        self.relu_rnn = nn.RNN(4, 5, num_layers=2, nonlinearity="relu", batch_first=True)
        self.tanh_rnn = nn.RNN(5, 5, batch_first=True, bias=False)
        self.out = nn.Linear(5, VOCAB)

    def forward(self, chars: torch.Tensor) -> torch.Tensor:
        hidden, _ = self.relu_rnn(self.embedding(chars))
        hidden, _ = self.tanh_rnn(hidden)
        return torch.log_softmax(self.out(hidden), dim=-1)


class StatefulLanguageModel(nn.Module):
    """Time-major LSTM with (h0, c0) in and (hn, cn) out, as a streaming language model carries them."""

    def __init__(self) -> None:
        super().__init__()
        self.embedding = nn.Embedding(VOCAB, 4)
        self.lstm = nn.LSTM(4, 5, num_layers=2)
        self.out = nn.Linear(5, VOCAB)

    def forward(self, tokens: torch.Tensor, h0: torch.Tensor, c0: torch.Tensor) -> tuple[torch.Tensor, ...]:
        output, (hn, cn) = self.lstm(self.embedding(tokens), (h0, c0))
        return self.out(output), hn, cn


class AttentionClassifier(nn.Module):
    """BiLSTM with additive attention pooling over time."""

    def __init__(self) -> None:
        super().__init__()
        self.lstm = nn.LSTM(3, 4, bidirectional=True, batch_first=True)
        self.score = nn.Sequential(nn.Linear(8, 6), nn.Tanh(), nn.Linear(6, 1))
        self.out = nn.Linear(8, 2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        states, _ = self.lstm(x)
        weights = torch.softmax(self.score(states), dim=1)
        return self.out((weights * states).sum(dim=1))


class GruAutoencoder(nn.Module):
    """Encoder GRU's last state repeated over time feeds a decoder GRU (sequence reconstruction)."""

    def __init__(self) -> None:
        super().__init__()
        self.encoder = nn.GRU(2, 4, batch_first=True)
        self.decoder = nn.GRU(4, 4, batch_first=True)
        self.out = nn.Linear(4, 2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        _, hidden = self.encoder(x)
        repeated = hidden[-1].unsqueeze(1).expand(-1, x.size(1), -1)
        decoded, _ = self.decoder(repeated)
        return self.out(decoded)


class LstmCellLoopTimeMajor(nn.Module):
    """An nn.LSTMCell stepped over x.unbind(0) from given (h0, c0): the last state out (fused by modelbridge)."""

    def __init__(self) -> None:
        super().__init__()
        self.cell = nn.LSTMCell(3, 5)
        self.out = nn.Linear(5, 2)

    def forward(self, x: torch.Tensor, h0: torch.Tensor, c0: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        h, c = h0, c0
        for step in x.unbind(0):
            h, c = self.cell(step, (h, c))
        return self.out(h), c


class GruCellLoopSequence(nn.Module):
    """Embedding, then an nn.GRUCell stepped over tokens.size(1); every step's state stacked, then a head."""

    def __init__(self) -> None:
        super().__init__()
        self.embedding = nn.Embedding(VOCAB, 4)
        self.cell = nn.GRUCell(4, 6)
        self.out = nn.Linear(6, 3)

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        embedded = self.embedding(tokens)
        h = torch.zeros(tokens.size(0), 6)
        states = []
        for t in range(tokens.size(1)):
            h = self.cell(embedded[:, t], h)
            states.append(h)
        return self.out(torch.stack(states, dim=1))


class StackedCellLoop(nn.Module):
    """Two cells stepped together (an LSTMCell feeding a GRUCell) per time step: two fused nodes."""

    def __init__(self) -> None:
        super().__init__()
        self.lower = nn.LSTMCell(3, 4)
        self.upper = nn.GRUCell(4, 5)
        self.out = nn.Linear(5, 2)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        h1, c1 = torch.zeros(x.size(0), 4), torch.zeros(x.size(0), 4)
        h2 = torch.zeros(x.size(0), 5)
        outputs = []
        for t in range(x.size(1)):
            h1, c1 = self.lower(x[:, t], (h1, c1))
            h2 = self.upper(h1, h2)
            outputs.append(h2.unsqueeze(1))
        return self.out(torch.cat(outputs, dim=1)), h2


def _tokens(rng: np.random.Generator, batch: int, length: int) -> np.ndarray:
    return rng.integers(1, VOCAB, size=(batch, length)).astype(np.int64)


def _floats(*shape: int) -> Callable[[np.random.Generator], np.ndarray]:
    return lambda rng: rng.standard_normal(shape).astype(np.float32)


@dataclass(frozen=True)
class Case:
    build: Callable[[], nn.Module]
    specs: tuple[InputSpec, ...]
    feeds: Feeds
    fused: int  # one node per layer (both directions in one node)


CASES: dict[str, Case] = {
    "sentiment-packed-lstm": Case(
        SentimentPacked, (InputSpec("tokens", (None, None), "int64"), InputSpec("lengths", (None,), "int64")),
        lambda rng, b, t: {"tokens": _tokens(rng, b, t), "lengths": _lengths(rng, b, t)}, 1),
    "packed-bigru-hidden-only-classifier": Case(
        PackedHiddenOnly, (InputSpec("tokens", (None, None), "int64"), InputSpec("lengths", (None,), "int64")),
        lambda rng, b, t: {"tokens": _tokens(rng, b, t), "lengths": _lengths(rng, b, t)}, 2),
    "packed-sorted-bilstm-tagger": Case(
        PackedBiTagger, (InputSpec("tokens", (None, None), "int64"), InputSpec("lengths", (None,), "int64")),
        lambda rng, b, t: {"tokens": _tokens(rng, b, t), "lengths": _lengths(rng, b, t, descending=True)}, 2),
    "packed-gru-time-major-total-length": Case(
        PackedGruSeqFirst, (InputSpec("x", (None, None, 3)), InputSpec("lengths", (None,), "int64")),
        lambda rng, b, t: {"x": rng.standard_normal((t, b, 3)).astype(np.float32), "lengths": _lengths(rng, b, t)}, 1),
    "bigru-layernorm-tagger": Case(
        BiGruTagger, (InputSpec("tokens", (None, None), "int64"),),
        lambda rng, b, t: {"tokens": _tokens(rng, b, t)}, 1),
    "seq2seq-lstm-encoder-decoder": Case(
        Seq2Seq, (InputSpec("source", (None, None), "int64"), InputSpec("target", (None, None), "int64")),
        lambda rng, b, t: {"source": _tokens(rng, b, t), "target": _tokens(rng, b, max(1, t - 1))}, 4),
    "stacked-lstm-forecaster-dropout": Case(
        Forecaster, (InputSpec("series", (None, None, 2)),),
        lambda rng, b, t: {"series": rng.standard_normal((b, t, 2)).astype(np.float32)}, 3),
    "conv1d-maxpool-lstm": Case(
        ConvLstm, (InputSpec("signal", (None, None, 3)),),
        lambda rng, b, t: {"signal": rng.standard_normal((b, t, 3)).astype(np.float32)}, 1),
    "char-rnn-relu-tanh": Case(
        CharRnn, (InputSpec("chars", (None, None), "int64"),),
        lambda rng, b, t: {"chars": _tokens(rng, b, t)}, 3),
    "stateful-lm-time-major-h0-c0": Case(
        StatefulLanguageModel,
        (InputSpec("tokens", (None, None), "int64"), InputSpec("h0", (2, None, 5)), InputSpec("c0", (2, None, 5))),
        lambda rng, b, t: {"tokens": _tokens(rng, t, b), "h0": rng.standard_normal((2, b, 5)).astype(np.float32),
                           "c0": rng.standard_normal((2, b, 5)).astype(np.float32)}, 2),
    "bilstm-attention-classifier": Case(
        AttentionClassifier, (InputSpec("x", (None, None, 3)),),
        lambda rng, b, t: {"x": rng.standard_normal((b, t, 3)).astype(np.float32)}, 1),
    "lstmcell-loop-time-major-h0-c0": Case(
        LstmCellLoopTimeMajor, (InputSpec("x", (None, None, 3)), InputSpec("h0", (None, 5)), InputSpec("c0", (None, 5))),
        lambda rng, b, t: {"x": rng.standard_normal((t, b, 3)).astype(np.float32),
                           "h0": rng.standard_normal((b, 5)).astype(np.float32),
                           "c0": rng.standard_normal((b, 5)).astype(np.float32)}, 1),
    "grucell-loop-stacked-steps": Case(
        GruCellLoopSequence, (InputSpec("tokens", (None, None), "int64"),),
        lambda rng, b, t: {"tokens": _tokens(rng, b, t)}, 1),
    "stacked-cells-loop": Case(
        StackedCellLoop, (InputSpec("x", (None, None, 3)),),
        lambda rng, b, t: {"x": rng.standard_normal((b, t, 3)).astype(np.float32)}, 2),
    "gru-sequence-autoencoder": Case(
        GruAutoencoder, (InputSpec("x", (None, None, 2)),),
        lambda rng, b, t: {"x": rng.standard_normal((b, t, 2)).astype(np.float32)}, 2),
}


def _model(name: str) -> nn.Module:
    torch.manual_seed(sorted(CASES).index(name))
    model = CASES[name].build().eval()
    with torch.no_grad():  # random biases: the bias rows of the gate check mean something
        for param_name, param in model.named_parameters():
            if "bias" in param_name:
                param.normal_()
    return model


@pytest.fixture(scope="module")
def corpus() -> dict[str, tuple[nn.Module, ConversionResult]]:
    results = {}
    for name, case in CASES.items():
        model = _model(name)
        results[name] = (model, convert(model, framework="pytorch", inputs=list(case.specs)))
    return results


def _all_nodes(graph: onnx.GraphProto) -> Iterator[onnx.NodeProto]:
    for node in graph.node:
        yield node
        for attr in node.attribute:
            for sub in ([attr.g] if attr.type == onnx.AttributeProto.GRAPH else list(attr.graphs)):
                yield from _all_nodes(sub)


def _run_torch(model: nn.Module, feeds: dict[str, np.ndarray]) -> list[np.ndarray]:
    with torch.no_grad():
        out = model(*[torch.from_numpy(value) for value in feeds.values()])
    return [tensor.numpy() for tensor in (out if isinstance(out, tuple) else (out,))]


@pytest.mark.parametrize("name", sorted(CASES))
def test_corpus_model_is_fused_proven_and_gate_exact(name: str, corpus: dict) -> None:
    model, result = corpus[name]
    ops = [node.op_type for node in _all_nodes(result.model.graph)]
    assert not {"Loop", "Scan", "If"} & set(ops), ops
    assert sum(op in TORCH_GATES for op in ops) == CASES[name].fused == len(result.annotations)

    rng = np.random.default_rng(42)
    for batch, length in SIZES:
        feeds = CASES[name].feeds(rng, batch, length)
        expected = _run_torch(model, feeds)
        actual = run_onnx(result.model, feeds)
        assert len(actual) == len(expected)
        for (output, got), want in zip(actual.items(), expected, strict=True):
            assert got.shape == want.shape, (name, output, batch, length)
            np.testing.assert_allclose(got, want, atol=ATOL, rtol=0, err_msg=f"{name} {output} b={batch} t={length}")

    params = {key: value.detach().numpy() for key, value in model.state_dict().items()}
    for node in gates.split_gates_arrays(result.model)["nodes"]:
        source = node["source"]
        order, gate_map = TORCH_GATES[node["op"]]
        hidden = node["hidden_size"]
        for split in node["directions"]:
            names = source["variables"]
            direction = split["direction"]
            for k, gate in enumerate(order):
                rows = slice(k * hidden, (k + 1) * hidden)
                block = split["gates"][gate_map[gate]]
                assert block["source_gate"] == gate
                np.testing.assert_array_equal(block["W"], params[names[f"{direction}.W"]][rows])
                np.testing.assert_array_equal(block["R"], params[names[f"{direction}.R"]][rows])
                for role in ("Wb", "Rb"):
                    bias = params[names[f"{direction}.{role}"]][rows] if f"{direction}.{role}" in names else 0
                    np.testing.assert_array_equal(block[role], np.broadcast_to(bias, (hidden,)))


def _plain_export(model: nn.Module, case: Case) -> bool:
    """Does plain torch.onnx (either exporter) turn the model into a model onnxruntime runs at the traced size?"""
    feeds = case.feeds(np.random.default_rng(0), 3, 5)
    args = tuple(torch.from_numpy(value) for value in feeds.values())
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        try:
            buffer = io.BytesIO()
            torch.onnx.export(model, args, buffer, dynamo=False, opset_version=17,  # type: ignore[arg-type]
                              input_names=list(feeds))
            run_onnx(onnx.load_from_string(buffer.getvalue()), feeds)
            return True
        except Exception:  # noqa: BLE001 - a plain exporter failing is the fact under test
            return False


def test_whatever_plain_torch_onnx_converts_modelbridge_converts(corpus: dict) -> None:
    plain = {name: _plain_export(corpus[name][0], case) for name, case in CASES.items()}
    assert sum(plain.values()) >= 10, plain
    for name in plain:  # modelbridge converted each of them (and those plain torch.onnx fails on), fused and proven
        assert corpus[name][1].parity.passed
