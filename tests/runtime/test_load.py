"""compress_modules_ and load_compressed: replacement, dense fallback, reports, strictness."""

from __future__ import annotations

from pathlib import Path
from typing import TypeVar

import pytest
import torch
from torch import nn
from torch.nn.utils import parametrize

import deepzip as dz
from deepzip.errors import CheckpointError, ConfigError, CorruptFileError, InvalidTensorError
from deepzip.format import save
from deepzip.format.checkpoint import plain_state_dict
from deepzip.quantize.shared import SharedTensor
from deepzip.runtime import (
    RuntimeOverride,
    RuntimePolicy,
    SparseConv,
    SparseLinear,
    compress_modules_,
    density_threshold,
    load_compressed,
    runtime_report,
)


class Net(nn.Module):
    """Conv, embedding, a linear layer used twice (tied) and a head."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(2, 8, 3, padding=1)
        self.embed = nn.Embedding(10, 8)
        self.shared = nn.Linear(8, 8)
        self.alias = self.shared
        self.head = nn.Linear(8, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.conv(x).mean(dim=(2, 3)) + self.embed.weight[:1]
        h = torch.relu(self.alias(torch.relu(self.shared(h))))
        return self.head(h)


_M = TypeVar("_M", bound=nn.Module)


def _compress(net: _M, sparsity: float) -> _M:
    """``net`` pruned to ``sparsity`` and quantized to 4 bits, in place."""
    dz.prune_(net, dz.PruneConfig(sparsity=sparsity))
    dz.quantize_(net, dz.QuantizeConfig(bits=4))
    return net


def _quantized(seed: int = 0, sparsity: float = 0.5) -> Net:
    torch.manual_seed(seed)
    return _compress(Net(), sparsity).eval()


X = torch.randn(3, 2, 6, 6, generator=torch.Generator().manual_seed(9))


def test_every_supported_layer_goes_sparse_and_outputs_match() -> None:
    net = _quantized()
    with torch.no_grad():
        expected = net(X)
    report = compress_modules_(net, dz.export_shared(net), policy=RuntimePolicy(mode="sparse"))
    assert isinstance(net.conv, SparseConv)
    assert isinstance(net.shared, SparseLinear)
    assert net.alias is net.shared
    assert isinstance(net.head, SparseLinear)
    assert isinstance(net.embed, nn.Embedding)
    assert not parametrize.is_parametrized(net.embed, "weight")
    forms = {layer.name: layer.form for layer in report.layers}
    assert forms == {
        "conv.weight": "sparse",
        "embed.weight": "dense",
        "shared.weight": "sparse",
        "head.weight": "sparse",
    }
    embed = next(layer for layer in report.layers if layer.name == "embed.weight")
    assert "Embedding has no sparse runtime form" in embed.reason
    assert report.sparse == ("conv.weight", "shared.weight", "head.weight")
    assert report.dense == ("embed.weight",)
    assert runtime_report(net) is report
    assert not net.head.training  # the training flag is kept
    with torch.no_grad():
        torch.testing.assert_close(net(X), expected, rtol=1e-5, atol=1e-5)
    assert report.to_dict()["layers"][0]["form"] == "sparse"


def test_dense_policy_decodes_into_the_parameters() -> None:
    net = _quantized()
    with torch.no_grad():
        expected = net(X)
    report = compress_modules_(net, dz.export_shared(net), policy=RuntimePolicy(mode="dense"))
    assert report.sparse == ()
    assert all(layer.runtime_bytes == layer.dense_bytes for layer in report.layers)
    for module in (net.conv, net.shared, net.head, net.embed):
        assert type(module) in (nn.Conv2d, nn.Linear, nn.Embedding)
        assert not parametrize.is_parametrized(module, "weight")
    with torch.no_grad():
        torch.testing.assert_close(net(X), expected, rtol=0, atol=0)


def test_auto_policy_keeps_small_layers_dense_and_says_why() -> None:
    net = _quantized()
    report = compress_modules_(net, dz.export_shared(net))
    assert report.sparse == ()
    assert all(
        "min_dense_bytes" in layer.reason or "Embedding" in layer.reason for layer in report.layers
    )


def test_errors_name_the_tensor_and_leave_the_model_alone() -> None:
    net = _quantized()
    shared = dz.export_shared(net)
    with pytest.raises(CheckpointError, match=r"'nope\.weight' names no module"):
        compress_modules_(net, {**shared, "nope.weight": shared["head.weight"]})
    with pytest.raises(CheckpointError, match=r"'head\.weight' has shape \(8, 8\)"):
        compress_modules_(net, {**shared, "head.weight": shared["shared.weight"]})
    with pytest.raises(CheckpointError, match="no such parameter"):
        compress_modules_(net, {"head.scale": shared["head.weight"]})
    policy = RuntimePolicy(overrides=(RuntimeOverride("decoder.*", "sparse"),))
    with pytest.raises(ConfigError, match=r"'decoder\.\*' matches no compressed layer"):
        compress_modules_(net, shared, policy=policy)
    assert isinstance(net.head, nn.Linear)
    assert parametrize.is_parametrized(net.head, "weight")
    with pytest.raises(ConfigError, match="no runtime report"):
        runtime_report(nn.Linear(2, 2))


def test_a_root_layer_cannot_be_replaced_and_is_decoded() -> None:
    layer = nn.Linear(6, 4)
    ones = torch.ones(4, 6, dtype=torch.uint8)
    shared = {"weight": SharedTensor(torch.tensor([-1.0, 1.0]), ones, ones.bool())}
    report = compress_modules_(layer, shared, policy=RuntimePolicy(mode="sparse"))
    assert report.layers[0].form == "dense"
    assert "model itself" in report.layers[0].reason
    assert torch.equal(layer.weight, torch.ones(4, 6))


def _saved(tmp_path: Path, sparsity: float = 0.5) -> tuple[Path, torch.Tensor]:
    net = _quantized(sparsity=sparsity)
    with torch.no_grad():
        expected = net(X)
    path = tmp_path / "net.dzip"
    save(net, path)
    return path, expected


def test_load_compressed_round_trip_without_dense_decoding(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    path, expected = _saved(tmp_path)
    torch.manual_seed(5)
    fresh = Net().eval()
    calls: list[int] = []
    original = dz.quantize.SharedTensor.dense

    def spy(self: dz.quantize.SharedTensor) -> torch.Tensor:
        calls.append(self.indices.dim())
        return original(self)

    monkeypatch.setattr(dz.quantize.SharedTensor, "dense", spy)
    policy = RuntimePolicy(mode="sparse")
    model = load_compressed(path, fresh, policy=policy)
    assert model is fresh
    assert calls == [2]  # only the embedding (no sparse form) was decoded dense
    with torch.no_grad():
        torch.testing.assert_close(model(X), expected, rtol=1e-5, atol=1e-5)
    assert runtime_report(model).sparse == ("conv.weight", "shared.weight", "head.weight")


def test_batch_size_hint_reaches_the_policy(tmp_path: Path) -> None:
    # a density between the batch-1 and the batch-64 linear thresholds
    density = (density_threshold("linear", 1) + density_threshold("linear", 64)) / 2
    path, _ = _saved(tmp_path, sparsity=1 - density)
    policy = RuntimePolicy(min_dense_bytes=0, conv_max_density=1.0)
    model = load_compressed(path, Net(), policy=policy, batch_size_hint=1)
    assert runtime_report(model).policy.batch_size == 1
    assert runtime_report(model).sparse == ("conv.weight", "shared.weight", "head.weight")
    model = load_compressed(path, Net(), policy=policy, batch_size_hint=64)
    assert runtime_report(model).policy.batch_size == 64
    assert runtime_report(model).sparse == ("conv.weight",)
    with pytest.raises(ConfigError, match="batch_size"):
        load_compressed(path, Net(), batch_size_hint=0)


class Wider(Net):
    def __init__(self) -> None:
        super().__init__()
        self.head = nn.Linear(8, 4)
        self.extra = nn.Linear(2, 2)


def test_load_compressed_is_strict_about_keys_and_shapes(tmp_path: Path) -> None:
    path, _ = _saved(tmp_path)
    with pytest.raises(CheckpointError, match=r"missing 2 key\(s\): extra\.weight, extra\.bias"):
        load_compressed(path, Wider())
    with pytest.raises(CheckpointError, match=r"'head\.weight' has shape \(3, 8\)"):
        load_compressed(path, Wider(), strict=False)
    smaller = Net()
    del smaller.embed
    with pytest.raises(CheckpointError, match=r"unexpected 1 key\(s\): embed\.weight"):
        load_compressed(path, smaller)


def test_damaged_files_raise_corrupt_file_error(tmp_path: Path) -> None:
    path, _ = _saved(tmp_path)
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])
    with pytest.raises(CorruptFileError):
        load_compressed(path, Net())


class Attention(nn.Module):
    """Self-attention (its ``out_proj.weight`` read by ``MultiheadAttention``) and a head."""

    def __init__(self) -> None:
        super().__init__()
        self.attn = nn.MultiheadAttention(16, 2, batch_first=True)
        self.head = nn.Linear(16, 4)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y, _ = self.attn(x, x, x)
        out: torch.Tensor = self.head(y.mean(1))
        return out


def _encoder_layer() -> nn.Module:
    return nn.TransformerEncoderLayer(16, 2, 32, dropout=0.0, batch_first=True)


@pytest.mark.parametrize(
    ("make", "sparse"),
    [(Attention, ("head.weight",)), (_encoder_layer, ())],
)
@pytest.mark.parametrize("train", [False, True])
def test_children_of_weight_reading_parents_stay_dense(
    tmp_path: Path, make: type[nn.Module], sparse: tuple[str, ...], train: bool
) -> None:
    torch.manual_seed(0)
    net = _compress(make(), 0.8)
    path = tmp_path / "attn.dzip"
    save(net, path)
    dense = dz.load_model(make(), path).train(train)
    forced = RuntimePolicy(mode="sparse", overrides=(RuntimeOverride("*", "sparse"),))
    model = load_compressed(path, make(), policy=forced).train(train)
    report = runtime_report(model)
    assert report.sparse == sparse
    reasons = {layer.name: layer.reason for layer in report.layers}
    for name in report.dense:  # out_proj is also a Linear subclass, which is named first
        expected = {
            "out_proj": "NonDynamicallyQuantizableLinear is a subclass of Linear",
            "linear1": "child of TransformerEncoderLayer",
            "linear2": "child of TransformerEncoderLayer",
        }[name.rsplit(".", 2)[-2]]
        assert expected in reasons[name]
    x = torch.randn(3, 5, 16, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        torch.testing.assert_close(model(x), dense(x), rtol=1e-5, atol=1e-5)


class ScaledLinear(nn.Linear):
    """A subclass with its own forward: a runtime module would drop the factor 2."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return 2.0 * super().forward(x)


def test_a_subclass_of_linear_stays_dense_and_says_why(tmp_path: Path) -> None:
    def make() -> nn.Sequential:
        return nn.Sequential(ScaledLinear(16, 8), nn.ReLU(), nn.Linear(8, 4))

    torch.manual_seed(0)
    net = _compress(make(), 0.8)
    path = tmp_path / "sub.dzip"
    save(net, path)
    model = make()
    load_compressed(path, model, policy=RuntimePolicy(mode="sparse")).eval()
    report = runtime_report(model)
    assert type(model[0]) is ScaledLinear
    assert isinstance(model[2], SparseLinear)
    assert report.sparse == ("2.weight",)
    assert report.layers[0].reason == (
        "ScaledLinear is a subclass of Linear: its own forward or code that reads .weight "
        "could not run on a runtime module"
    )
    x = torch.randn(3, 16, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        torch.testing.assert_close(model(x), dz.load_model(make(), path).eval()(x))


def test_a_failed_load_leaves_the_model_untouched(tmp_path: Path) -> None:
    path, _ = _saved(tmp_path)
    net = _quantized(seed=7)
    before = {k: v.clone() for k, v in net.state_dict().items()}
    policy = RuntimePolicy(overrides=(RuntimeOverride("decoder.*", "sparse"),))
    with pytest.raises(ConfigError, match=r"'decoder\.\*' matches no compressed layer"):
        load_compressed(path, net, policy=policy)
    after = net.state_dict()
    assert after.keys() == before.keys()
    for key, value in before.items():
        assert torch.equal(after[key], value), key
    assert parametrize.is_parametrized(net.head, "weight")


def _with_1d_shared(tmp_path: Path) -> tuple[Path, nn.Sequential]:
    """A .dzip file whose LayerNorm weight is a 1-D shared tensor, beside a quantized Linear."""
    torch.manual_seed(3)
    net = _compress(nn.Sequential(nn.Linear(8, 4), nn.LayerNorm(4)), 0.5)
    state: dict[str, torch.Tensor | SharedTensor] = dict(plain_state_dict(net))
    state["0.weight"] = dz.export_shared(net)["0.weight"]
    idx = torch.tensor([0, 1, 1, 0], dtype=torch.uint8)
    mask = torch.tensor([True, True, False, True])
    state["1.weight"] = SharedTensor(torch.tensor([0.5, 1.0]), idx, mask)
    path = tmp_path / "ln.dzip"
    save(state, path)
    return path, net


def test_a_1d_shared_tensor_loads_and_is_decoded_dense(tmp_path: Path) -> None:
    # load_compressed used to require >= 2 dimensions of every shared tensor, even of those
    # that are decoded dense, so a valid file that load_model reads was refused
    path, net = _with_1d_shared(tmp_path)
    norm = nn.LayerNorm(4)
    fresh = nn.Sequential(nn.Linear(8, 4), norm)
    load_compressed(path, fresh, policy=RuntimePolicy(mode="sparse"))
    assert norm.weight.tolist() == [0.5, 1.0, 0.0, 0.5]
    report = runtime_report(fresh)
    assert report.sparse == ("0.weight",)
    assert report.dense == ("1.weight",)
    assert isinstance(fresh[0], SparseLinear)
    x = torch.randn(2, 8)
    runtime, original = fresh[0], net[0]
    with torch.no_grad():
        torch.testing.assert_close(runtime(x), original(x), rtol=1e-5, atol=1e-5)


def test_a_1d_weight_is_never_made_sparse() -> None:
    # a Linear whose weight was replaced by a 1-D parameter: the policy says sparse, but a
    # runtime matrix needs 2 dimensions, so it is decoded dense rather than failing half-way
    layer = nn.Linear(4, 1)
    layer.weight = nn.Parameter(torch.zeros(4))
    model = nn.Sequential(layer)
    idx = torch.tensor([1, 0, 1, 1], dtype=torch.uint8)
    shared = {"0.weight": SharedTensor(torch.tensor([-1.0, 2.0]), idx, idx.bool())}
    report = compress_modules_(model, shared, policy=RuntimePolicy(mode="sparse"))
    assert report.layers[0].form == "dense"
    assert "1-D tensor has no sparse runtime form" in report.layers[0].reason
    assert model[0] is layer
    assert layer.weight.tolist() == [2.0, 0.0, 2.0, 2.0]


def test_a_malformed_1d_shared_tensor_is_still_refused(tmp_path: Path) -> None:
    net = nn.Sequential(nn.LayerNorm(4))
    idx = torch.tensor([0, 3, 1, 0], dtype=torch.uint8)
    shared = {"0.weight": SharedTensor(torch.tensor([0.5, 1.0]), idx, idx.bool())}
    with pytest.raises(InvalidTensorError, match=r"0\.weight: an index reaches 3"):
        compress_modules_(net, shared)


# --------------------------------------------------------------- tied tensors (ALIAS entries)


def test_the_file_of_net_holds_the_tied_layer_once(tmp_path: Path) -> None:
    path, _ = _saved(tmp_path)
    cf = dz.format.read_compressed(path)
    assert cf.aliases == {"alias.weight": "shared.weight", "alias.bias": "shared.bias"}
    assert cf.shared["alias.weight"] is cf.shared["shared.weight"]


@pytest.mark.parametrize("form", ["sparse", "dense"])
def test_a_module_registered_twice_is_one_layer_under_either_name(
    tmp_path: Path, form: str
) -> None:
    path, expected = _saved(tmp_path)
    other = "dense" if form == "sparse" else "sparse"
    for pattern in ("alias", "alias.weight", "shared"):  # any name of the layer can be forced
        policy = RuntimePolicy(mode=other, overrides=(RuntimeOverride(pattern, form),))  # type: ignore[arg-type]
        model = load_compressed(path, Net().eval(), policy=policy)
        assert model.alias is model.shared
        assert isinstance(model.shared, SparseLinear) == (form == "sparse")
        rows = [layer for layer in runtime_report(model).layers if layer.name == "shared.weight"]
        assert len(rows) == 1
        assert rows[0].form == form
        assert rows[0].aliases == ("alias.weight",)
        assert rows[0].to_dict()["aliases"] == ["alias.weight"]
        assert not any(layer.name == "alias.weight" for layer in runtime_report(model).layers)
        with torch.no_grad():
            torch.testing.assert_close(model(X), expected, rtol=1e-5, atol=1e-5)


def test_compress_modules_accepts_an_override_on_the_second_name() -> None:
    net = _quantized()
    policy = RuntimePolicy(mode="sparse", overrides=(RuntimeOverride("alias", "dense"),))
    report = compress_modules_(net, dz.export_shared(net), policy=policy)
    assert net.alias is net.shared
    assert isinstance(net.shared, nn.Linear)
    assert report.dense == ("embed.weight", "shared.weight")


def test_two_names_of_one_module_must_agree() -> None:
    net = _quantized()
    shared = dz.export_shared(net)
    same = shared["shared.weight"]
    copy = SharedTensor(same.codebook.clone(), same.indices.clone(), same.mask.clone())
    report = compress_modules_(net, {**shared, "alias.weight": copy})
    assert [layer.name for layer in report.layers].count("shared.weight") == 1
    net = _quantized()
    shared = dz.export_shared(net)
    other = SharedTensor(same.codebook + 1, same.indices, same.mask)
    with pytest.raises(CheckpointError, match=r"'shared\.weight' and 'alias\.weight' are the same"):
        compress_modules_(net, {**shared, "alias.weight": other})
    assert parametrize.is_parametrized(net.shared, "weight")  # untouched


class Untied(Net):
    """``Net`` whose ``alias`` is a layer of its own."""

    def __init__(self) -> None:
        super().__init__()
        self.alias = nn.Linear(8, 8)


def test_a_tied_file_loads_into_an_untied_model(tmp_path: Path) -> None:
    path, expected = _saved(tmp_path)
    for mode in ("sparse", "dense"):
        model = load_compressed(path, Untied().eval(), policy=RuntimePolicy(mode=mode))  # type: ignore[arg-type]
        assert model.alias is not model.shared
        rows = {layer.name: layer for layer in runtime_report(model).layers}
        assert rows["alias.weight"].form == rows["shared.weight"].form == mode
        assert rows["alias.weight"].aliases == rows["shared.weight"].aliases == ()
        with torch.no_grad():
            torch.testing.assert_close(model(X), expected, rtol=1e-5, atol=1e-5)


class TiedEmbedding(nn.Module):
    """An embedding and an output layer sharing one ``Parameter`` (not compressed)."""

    def __init__(self) -> None:
        super().__init__()
        self.encoder = nn.Embedding(10, 8)
        self.decoder = nn.Linear(8, 10)
        self.decoder.weight = self.encoder.weight

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out: torch.Tensor = self.decoder(self.encoder(x))
        return out


def test_a_shared_parameter_stays_tied_through_load_compressed(tmp_path: Path) -> None:
    torch.manual_seed(2)
    net = TiedEmbedding()
    path = tmp_path / "tied.dzip"
    save(net, path)
    tokens = torch.tensor([[1, 2, 9]])
    with torch.no_grad():
        expected = net(tokens)
    torch.manual_seed(3)
    model = load_compressed(path, TiedEmbedding())
    assert model.decoder.weight is model.encoder.weight
    with torch.no_grad():
        torch.testing.assert_close(model(tokens), expected, rtol=0, atol=0)
