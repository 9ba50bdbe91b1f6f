"""The aggregators: equivalence with the upstream implementations, shapes on awkward bag sizes, the
CLAM instance loss and GLTrans instance scores on bags with planted positive instances."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from sklearn.metrics import roc_auc_score

from maga_core import mil
from maga_core.errors import MagaError
from maga_core.mil.layers import square_index

ALL = ["gltrans", "transmil", "clam_sb", "clam_mb", "abmil"]
UPSTREAM = ["clam_sb", "clam_mb", "transmil", "gltrans"]


pytestmark = pytest.mark.usefixtures("one_thread")


def _reference(reference_file, name):
    return torch.load(reference_file(f"{name}_seed7.pt"), weights_only=True)


@pytest.mark.parametrize("name", UPSTREAM)
def test_from_reference_reproduces_upstream_logits(reference_file, name):
    ref = _reference(reference_file, name)
    assert ref["model"] == name
    n_classes = ref["cases"][0]["logits"].shape[1]
    model = mil.from_reference(name, ref["state_dict"], n_classes)
    assert not model.training
    with torch.no_grad():
        for case in ref["cases"]:
            out = model(case["input"])
            assert out.logits.shape == (1, n_classes)
            torch.testing.assert_close(out.logits, case["logits"], atol=1e-5, rtol=0)
            torch.testing.assert_close(out.logits.softmax(dim=1), case["prob"], atol=1e-5, rtol=0)
            if "attention_raw" in case:
                torch.testing.assert_close(out.extras["attention_raw"], case["attention_raw"], atol=1e-5, rtol=0)


def test_from_reference_drops_only_gltrans_unused_parameters(reference_file):
    sd = _reference(reference_file, "gltrans")["state_dict"]
    converted = mil.reference.convert("gltrans", sd)
    dropped = sorted(set(sd) - {k for k in sd if not k.startswith("global_att.")} - {
        "global_att.proj_q.weight", "global_att.proj_q.bias", "global_att.conv1.weight", "global_att.conv1.bias",
        "global_att.k1.weight", "global_att.k1.bias", "global_att.v1.weight", "global_att.v1.bias"}
        - {k for k in sd if k.startswith("global_att.norm1.")})
    assert len(converted) == len(sd) - len(dropped)
    assert all(k.split(".")[1] in {"conv2", "conv3", "norm2", "norm3", "k2", "v2", "k3", "v3", "proj_out"} for k in dropped)


def test_from_reference_refuses_wrong_model_or_classes(reference_file):
    sd = _reference(reference_file, "clam_sb")["state_dict"]
    with pytest.raises(MagaError, match="does not look like upstream transmil"):
        mil.from_reference("transmil", sd, 2)
    with pytest.raises(MagaError, match="3 classes"):
        mil.from_reference("clam_sb", sd, 3)
    with pytest.raises(MagaError, match="no upstream converter"):
        mil.from_reference("abmil", sd, 2)


@pytest.mark.parametrize("name", ALL)
@pytest.mark.parametrize("n", [1, 2, 7, 1000])
def test_shapes_on_odd_bag_sizes(name, n):
    torch.manual_seed(0)
    kw = {"dim": 64, "score_steps": 2} if name in ("gltrans", "transmil") else {}
    model = mil.build(name, in_dim=48, n_classes=3, **kw).eval()
    x = torch.randn(n, 48)
    out = model(x)
    assert out.logits.shape == (1, 3)
    assert out.scores.shape == (n,)
    assert torch.isfinite(out.logits).all() and torch.isfinite(out.scores).all()
    torch.testing.assert_close(model(x[None]).logits, out.logits)  # [1, N, D] is the same bag


@pytest.mark.parametrize("name", ["gltrans", "transmil"])
def test_attention_scores_cover_real_instances(name):
    torch.manual_seed(0)
    model = mil.build(name, in_dim=16, n_classes=2, dim=32, score_method="attention").eval()
    for n in (1, 7, 40):
        scores = model(torch.randn(n, 16)).scores
        assert scores.shape == (n,) and torch.isfinite(scores).all()


@pytest.mark.parametrize("name", ["gltrans", "transmil"])
def test_padding_is_deterministic_by_default_and_random_on_request(name):
    torch.manual_seed(0)
    model = mil.build(name, in_dim=16, n_classes=2, dim=32).eval()
    x = torch.randn(10, 16)  # padded to 16: 6 duplicates
    assert square_index(10).tolist() == list(range(10)) + list(range(6))
    torch.testing.assert_close(model(x).logits, model(x).logits, atol=0, rtol=0)
    model.random_padding = True
    draws = {tuple(model(x).logits.flatten().tolist()) for _ in range(5)}
    assert len(draws) > 1
    square = torch.randn(16, 16)  # no padding needed: random and deterministic agree
    a = model(square).logits
    model.random_padding = False
    torch.testing.assert_close(model(square).logits, a)


@pytest.mark.parametrize("name", ["clam_sb", "clam_mb"])
def test_clam_instance_loss(name):
    torch.manual_seed(0)
    model = mil.build(name, in_dim=32, n_classes=3)
    x = torch.randn(40, 32)
    assert model(x).aux_loss is None
    out = model(x, label=2)
    assert out.aux_loss.ndim == 0 and out.aux_loss > 0 and out.aux_loss.requires_grad
    bag = F.cross_entropy(out.logits, torch.tensor([2]))
    torch.testing.assert_close(out.combine(bag), 0.7 * bag + 0.3 * out.aux_loss)
    out.combine(bag).backward()
    assert all(clf.weight.grad is not None for clf in model.instance_classifiers)  # subtyping: all classes
    for n in (1, 2, 3):  # bags smaller than 2 * k_sample still give a finite loss
        assert torch.isfinite(model(torch.randn(n, 32), label=0).aux_loss)
    model.eval()
    out = model(x)
    attn = out.extras["attention_raw"].softmax(dim=1)
    branch = int(out.logits.argmax()) if name == "clam_mb" else 0
    torch.testing.assert_close(out.scores, attn[branch])


def test_build_rejects_unknown_model():
    with pytest.raises(MagaError, match="unknown MIL model"):
        mil.build("nope", 16, 2)


def _planted_bags(n_bags: int, gen: torch.Generator, n_inst: int = 30, dim: int = 16, k: int = 3):
    """Gaussian instances; every other bag is positive and holds k instances shifted along feature 0."""
    bags = []
    for i in range(n_bags):
        x = torch.randn(n_inst, dim, generator=gen)
        planted = torch.randperm(n_inst, generator=gen)[:k] if i % 2 else torch.empty(0, dtype=torch.long)
        x[planted, 0] += 8.0
        bags.append((x, i % 2, planted))
    return bags


def test_gltrans_scores_rank_planted_instances_first():
    torch.manual_seed(0)
    gen = torch.Generator().manual_seed(0)
    train, test = _planted_bags(30, gen), _planted_bags(10, gen)
    model = mil.build("gltrans", in_dim=16, n_classes=2, dim=64)
    opt = torch.optim.Adam(model.parameters(), lr=5e-4)
    for _ in range(6):
        for x, y, _ in train:
            order = torch.randperm(len(x))  # shuffled instances, as upstream trains
            loss = F.cross_entropy(model(x[order]).logits, torch.tensor([y]))
            opt.zero_grad()
            loss.backward()
            opt.step()
    model.eval()
    correct, aucs, top_hits = 0, [], []
    for x, y, planted in test:
        out = model(x)
        correct += int(out.logits.argmax()) == y
        if y:
            truth = torch.zeros(len(x))
            truth[planted] = 1
            aucs.append(roc_auc_score(truth.numpy(), out.scores.numpy()))
            top_hits.append(len(set(out.scores.topk(3).indices.tolist()) & set(planted.tolist())) / 3)
    assert correct >= 9
    assert sum(aucs) / len(aucs) >= 0.95, aucs
    assert sum(top_hits) / len(top_hits) >= 0.8, top_hits


def test_transformer_scores_are_computed_only_when_read():
    torch.manual_seed(0)
    model = mil.build("gltrans", in_dim=16, n_classes=2, dim=32, score_steps=2)
    x = torch.randn(9, 16)
    out = model(x)
    assert callable(out.__dict__["scores"])  # a training step that ignores scores pays nothing
    scores = out.scores
    assert scores.shape == (9,) and out.__dict__["scores"] is scores and not scores.requires_grad


def test_coordinate_layout_places_instances_at_their_tissue_cells():
    from maga_core.mil.layers import Layout

    # a 2 x 3 field of 256 px patches at level 0, one cell (row 1, col 0) without tissue, bag out of order
    coords = torch.tensor([[512, 256], [0, 0], [256, 256], [512, 0], [256, 0]])
    layout = Layout.from_coords(coords)
    assert (layout.height, layout.width) == (2, 3)
    tokens = torch.arange(5, dtype=torch.float32)[layout.index][None, :, None] + 1  # value = instance + 1
    grid = layout.to_grid(tokens)[0, 0]
    assert grid.tolist() == [[2.0, 5.0, 4.0], [0.0, 3.0, 1.0]]
    assert torch.equal(layout.from_grid(layout.to_grid(tokens)), tokens)


@pytest.mark.parametrize("name", ["gltrans", "transmil"])
def test_coordinate_placement_ignores_bag_order_and_sequence_placement_does_not(name):
    gen = torch.Generator().manual_seed(0)
    feats = torch.randn(23, 16, generator=gen)
    coords = torch.stack(torch.meshgrid(torch.arange(5), torch.arange(5), indexing="ij"), -1).reshape(-1, 2)[:23] * 64
    perm = torch.randperm(23, generator=gen)
    outs = {}
    for placement in ("coords", "sequence"):
        torch.manual_seed(0)
        model = mil.build(name, 16, 2, dim=32, placement=placement).eval()
        with torch.no_grad():
            a = model(feats, coords=coords).logits
            b = model(feats[perm], coords=coords[perm]).logits
        outs[placement] = (a - b).abs().max().item()
    assert outs["coords"] < 1e-5 and outs["sequence"] > 1e-4
    with pytest.raises(ValueError, match="coords"):
        mil.build(name, 16, 2, dim=32, placement="coords")(feats)


@pytest.mark.parametrize("name", ALL)
def test_a_batch_of_bags_gives_each_bag_its_own_outputs(name):
    torch.manual_seed(0)
    kw = {"dim": 64, "score_steps": 2} if name in ("gltrans", "transmil") else {}
    model = mil.build(name, in_dim=48, n_classes=3, **kw).eval()
    x = torch.randn(3, 40, 48)
    x[1] *= 3.0  # bags on different scales: the Nystrom pseudo-inverse must start from each bag's own
    batch, one = model(x), [model(bag) for bag in x]
    assert batch.logits.shape == (3, 3) and batch.scores.shape == (3, 40)
    torch.testing.assert_close(batch.logits, torch.cat([o.logits for o in one]), atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(batch.scores, torch.stack([o.scores for o in one]), atol=1e-5, rtol=1e-5)
    assert getattr(model, "batches_bags")


def test_coordinate_placed_grids_refuse_batches():
    model = mil.build("gltrans", 16, 2, dim=32, placement="coords").eval()
    coords = torch.stack(torch.meshgrid(torch.arange(3), torch.arange(3), indexing="ij"), -1).reshape(-1, 2) * 64
    assert not model.batches_bags
    with pytest.raises(ValueError, match="one bag at a time"):
        model(torch.randn(2, 9, 16), coords=torch.stack([coords, coords]))
