"""The lasso criteria as METHOD.md section 2 specifies them: signed by default (the relevance top-up
only under nonnegative=True), the class graph's options reachable, and APIB's response taken at
the layer that consumes the candidate channels, for each of the six models."""
import warnings

import pytest
import torch

import paperprune
from paperprune.criteria import Calibration, create_criterion
from paperprune.lab.data import class_balanced_batch, dataset_info, load_tensors
from paperprune.ib import channel_features, feature_statistics, layer_statistics
from paperprune.models import list_models, prunable_layers
from paperprune.structure import ClassTree
from paperprune.utils import PaperpruneError

pytestmark = pytest.mark.usefixtures("one_thread")


def _normalised(x, info):
    return (x.float() / 255 - torch.tensor(info.mean).view(1, -1, 1, 1)) / torch.tensor(info.std).view(1, -1, 1, 1)


@pytest.fixture(scope="module")
def fmnist():
    info = dataset_info("fashion-mnist")
    x, y = load_tensors("fashion-mnist", "train")
    return x, y, info


@pytest.fixture(scope="module")
def trained_resnet56(fmnist):
    """ResNet-56 after 20 SGD steps on Fashion-MNIST: trained enough to have ReLU-sparse, redundant
    channels (a random init has neither), cheap enough for CI."""
    x, y, info = fmnist
    torch.manual_seed(0)
    model = paperprune.create_model("resnet56", num_classes=10, in_channels=1)
    opt = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9)
    gen = torch.Generator().manual_seed(0)
    for _ in range(20):
        idx = torch.randint(0, len(y), (64,), generator=gen)
        loss = torch.nn.functional.cross_entropy(model(_normalised(x[idx], info)), y[idx])
        opt.zero_grad()
        loss.backward()
        opt.step()
    model.eval()
    xc, yc = class_balanced_batch(x, y, 10, seed=0)
    return model, Calibration(_normalised(xc, info), yc, 10, info.taxonomy, "classifier")


def test_signed_support_reaches_full_width(trained_resnet56):
    """At the weakest lam the signed lasso keeps every non-dead channel of every layer, so one global
    lam reaches any target down to no pruning without a top-up; B >= 0 keeps fewer and needs it."""
    model, calibration = trained_resnet56
    layers = prunable_layers(model)
    signed = create_criterion("classwise")
    signed.prepare(model, layers, calibration)
    assert signed.bounds()[0] == 0.0
    chosen = signed.select(signed.bounds()[0])
    for name, (mask, _) in chosen.items():
        assert torch.equal(mask, ~signed.statistics[name].dead), name
    assert signed.describe(0.0)["relevance_threshold"] is None
    assert signed.describe(0.0)["nonnegative"] is False

    nonneg = create_criterion("classwise", nonnegative=True)
    nonneg.problems, nonneg.statistics, nonneg.channels = signed.problems, signed.statistics, signed.channels
    nonneg.relevance = signed.relevance
    nonneg.lam_hi, nonneg.lam_lo = signed.lam_hi, signed.lam_lo
    assert nonneg.bounds()[0] == -1.0
    support = sum(int(mask.sum()) for mask, _ in nonneg.select(0.0).values())
    assert support < sum(int(mask.sum()) for mask, _ in chosen.values())
    assert nonneg.describe(-0.5)["relevance_threshold"] == 0.5


def test_a_solve_stopped_at_max_iter_is_reported(trained_resnet56):
    """Layers whose solve hit max_iter at the chosen lam are named in `describe` and warned about. At the
    default budget at most a layer or two of rank-deficient Q may stall (which, depends on the thread count's
    rounding), at 10 iterations many more."""
    model, calibration = trained_resnet56
    layers = prunable_layers(model)
    full, short = create_criterion("classwise"), create_criterion("classwise")
    short.max_iter = 10
    full.prepare(model, layers, calibration)
    short.prepare(model, layers, calibration)
    level = 0.5 * sum(full.bounds())
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        at_default = full.describe(level)["unconverged_layers"]
    assert len(at_default) <= 2
    with pytest.warns(UserWarning, match="stopped at max_iter=10 before its tolerance") as caught:
        stalled = short.describe(level)["unconverged_layers"]
    assert set(stalled) <= {layer.name for layer in layers} and len(stalled) > len(at_default) + 5
    message = str(caught[0].message)
    assert f"on {len(stalled)} layer(s)" in message and f"{stalled[0]} (Q of " in message


@pytest.mark.parametrize("method", ["apib", "classwise", "sglp", "stlp"])
@pytest.mark.parametrize("bad", [0, -5, 2.5, True, "100"])
def test_max_iter_must_be_a_positive_integer(method, bad):
    with pytest.raises(PaperpruneError, match=f"max_iter={bad!r} must be a positive integer"):
        create_criterion(method, max_iter=bad)


@pytest.mark.parametrize("arch", list_models())
def test_apib_response_is_the_consumers_output(arch):
    """APIB's response kernel is the output of the module consuming the channels: the statistics of
    layer_statistics(response='consumer') equal those computed from the observed features with the
    consumer's output as the response, on every model's first and last prunable layer."""
    torch.manual_seed(0)
    model = paperprune.create_model(arch, num_classes=4, in_channels=1).double().eval()
    images = torch.randn(8, 1, 32, 32, dtype=torch.float64)
    labels = torch.arange(8) % 4
    layers = prunable_layers(model)
    assert all(layer.consumer for layer in layers)
    picked = [layers[0], layers[-1]]
    stats = layer_statistics(model, picked, images, labels, 4, response="consumer", dtype=torch.float64)
    for layer in picked:
        feats = channel_features(model, [layer], images)[layer.name]
        consumer = paperprune.models.PrunableLayer("c", layer.consumer, layer.consumer)
        out = channel_features(model, [consumer], images)["c"]
        ref = feature_statistics(feats, labels, 4, outputs=out, dtype=torch.float64)
        torch.testing.assert_close(stats[layer.name].output_relevance, ref.output_relevance, rtol=1e-10, atol=1e-12)
        assert stats[layer.name].output_relevance.abs().max() > 0
    logits = layer_statistics(model, picked[:1], images, labels, 4, response="logits", dtype=torch.float64)
    assert not torch.allclose(logits[layers[0].name].output_relevance, stats[layers[0].name].output_relevance)


def test_graph_options_and_taxonomy_reach_sglp(trained_resnet56):
    model, calibration = trained_resnet56
    layers = prunable_layers(model)[-1:]
    knn = create_criterion("sglp", knn=1)
    knn.prepare(model, layers, calibration)
    dense = create_criterion("sglp", rho=0.0)
    dense.prepare(model, layers, calibration)
    assert knn.graph.num_edges < dense.graph.num_edges
    taxonomy = create_criterion("sglp", structure="taxonomy")
    taxonomy.prepare(model, layers, calibration)
    pairs = {tuple(e) for e in taxonomy.graph.edges.tolist()}
    expected = {(c, d) for group in calibration.taxonomy.values() for c in group for d in group if c < d}
    assert pairs == expected and bool((taxonomy.graph.signs == 1).all())
    with pytest.raises(PaperpruneError, match="rho=1.5"):
        paperprune.prune(model, [(calibration.images, calibration.labels)], method="sglp", rho=1.5)
    with pytest.raises(PaperpruneError, match="knn=0"):
        paperprune.prune(model, [(calibration.images, calibration.labels)], method="stlp", knn=0)
    with pytest.raises(PaperpruneError, match="no known class hierarchy"):
        bare = Calibration(calibration.images, calibration.labels, 10, {}, "classifier")
        create_criterion("sglp", structure="taxonomy").prepare(model, layers, bare)


@pytest.mark.parametrize("method", ["classwise", "sglp", "stlp"])
def test_class_plus_output_response_adds_apibs_column(trained_resnet56, method):
    """response='class+output': R is the class kernels' relevance with APIB's (the consuming layer's
    output) as one more column, for every class-wise criterion; the penalty takes the extra column
    (sTLP-IB: one more leaf, weight 1; sGLP-IB: no edge to it), and it changes what is kept."""
    model, calibration = trained_resnet56
    layers = prunable_layers(model)[-2:]
    plain, both = create_criterion(method), create_criterion(method, response="class+output")
    plain.prepare(model, layers, calibration)
    both.prepare(model, layers, calibration)
    apib = create_criterion("apib")
    apib.prepare(model, layers, calibration)
    for layer in layers:
        Q, R = both.problems[layer.name]
        Qp, Rp = plain.problems[layer.name]
        torch.testing.assert_close(Q, Qp)
        torch.testing.assert_close(R, torch.cat([Rp, apib.problems[layer.name][1]], 1))
    if method == "stlp":
        assert both.tree.num_classes == 11 and both.tree.groups[-1] == [10] and float(both.tree.weights[-1]) == 1.0
    if method == "sglp":
        assert torch.equal(both.graph.edges, plain.graph.edges)
    level = 0.5 * sum(both.bounds())
    kept = [torch.equal(both.select(level)[n][0], plain.select(level)[n][0]) for n in both.problems]
    assert not all(kept)
    assert both.describe(level)["response"] == "class+output" and plain.describe(level)["response"] == "class"


def test_response_option_is_refused_where_it_means_nothing():
    with pytest.raises(PaperpruneError, match="response='output'"):
        create_criterion("classwise", response="output")
    with pytest.raises(PaperpruneError, match="applies to the class-wise criteria"):
        create_criterion("apib", response="class+output")
    from paperprune.lab.experiment import RunConfig

    with pytest.raises(PaperpruneError, match=r"response='class\+output' \(--response\) only applies with a "
                                              r"class-wise criterion .*\(method 'l1'\)"):
        RunConfig(dataset="fashion-mnist", arch="resnet56", method="l1", flops_reduction=0.5, pretrain_epochs=1,
                  response="class+output").validate()


@pytest.mark.parametrize("method", ["stlp", "sglp", "classwise"])
def test_the_emptying_lam_skips_solves_the_bound_rules_out(method, tree, graph):
    """lam_hi is the first doubling of max |R| at which every layer's solution is zero, found as by solving at
    every doubling; doublings at which `solution_bound` already shows a kept row are passed over unsolved."""
    gen = torch.Generator().manual_seed(0)
    criterion = create_criterion(method)
    # half the fixture's weights: no class's groups sum to 1, so the tree keeps rows at lam = max |R|
    criterion.tree, criterion.graph = ClassTree(tree.groups, 0.5 * tree.weights), graph
    criterion.problems = {}
    for name, C in (("a", 12), ("b", 7)):
        Phi = torch.rand(20, C, generator=gen, dtype=torch.float64) + 0.2
        Y = torch.rand(20, 5, generator=gen, dtype=torch.float64)
        Phi, Y = Phi / Phi.norm(dim=0), Y / Y.norm(dim=0)
        criterion.problems[name] = (Phi.T @ Phi, 3 * Phi.T @ Y)
    solved = []
    solve = criterion.solve
    criterion.solve = lambda Q, R, lam, B0: solved.append(lam) or solve(Q, R, lam, B0)
    lam_hi = criterion._empty_lam()

    def empty(lam):
        return all(float(solve(Q, R, lam, None).B.norm(dim=1).max()) <= criterion.row_tol
                   for Q, R in criterion.problems.values())
    first = expected = max(float(R.abs().max()) for _, R in criterion.problems.values())
    while not empty(expected):
        expected *= 2
    assert lam_hi == expected
    assert solved == [lam_hi] * 2  # one solve per layer, at lam_hi only
    if method == "stlp":  # the tree keeps rows at max |R|: doublings passed over without solving
        assert lam_hi >= 2 * first
