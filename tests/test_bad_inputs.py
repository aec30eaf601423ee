"""The bad-input table: each input a hostile but fair user might type, over the CLIs,
the Python API and damaged stage files. Each row asserts the exit code (2) or the exception
(PaperpruneError), that the message names the bad value, that there is no traceback, and that
nothing was written (or only what the row says)."""
import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch

from paperprune.lab import cli, reproduce
from paperprune.lab.data import DeviceLoader
from paperprune.lab.experiment import RunConfig, run_experiment
from paperprune.utils import PaperpruneError

pytestmark = pytest.mark.usefixtures("one_thread")

RUN = ["run", "--dataset", "fashion-mnist", "--arch", "resnet56", "--method", "stlp", "--flops-reduction", "0.5",
       "--pretrain-epochs", "1", "--per-class", "10", "--test-per-class", "10", "--samples-per-class", "5",
       "--batch-size", "25", "--device", "cpu", "--no-progress", "--no-deployed-latency"]
TRAIN = ["train", "--dataset", "fashion-mnist", "--arch", "resnet56", "--epochs", "1", "--per-class", "5",
         "--device", "cpu", "--no-progress"]


def _with(base, **flags):
    """`base` with each --flag set to its value (replaced when present, appended otherwise; None: a switch)."""
    argv = list(base)
    for name, value in flags.items():
        flag = "--" + name.replace("_", "-")
        if value is None:
            argv.append(flag)
        elif flag in argv:
            argv[argv.index(flag) + 1] = value
        else:
            argv += [flag, value]
    return argv


def _files(root: Path) -> dict[str, bytes]:
    return {str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


# (argv, text the message must hold): one row per distinct input
RUN_ROWS = [
    (dict(finetune_lr="0"), "finetune_lr=0.0 (--finetune-lr)"),
    (dict(finetune_lr="-0.1"), "finetune_lr=-0.1"),
    (dict(finetune_lr="nan"), "finetune_lr=nan"),
    (dict(lr="-1"), "lr=-1.0 (--lr)"),
    (dict(lr="0"), "lr=0.0 (--lr)"),
    (dict(lr="nan"), "lr=nan (--lr)"),
    (dict(lr="inf"), "lr=inf (--lr)"),
    (dict(lr="abc"), "invalid float value: 'abc'"),
    (dict(weight_decay="nan"), "weight_decay=nan"),
    (dict(weight_decay="-0.5"), "weight_decay=-0.5"),
    (dict(samples_per_class="1"), "samples_per_class=1"),
    (dict(samples_per_class="0"), "samples_per_class=0"),
    (dict(samples_per_class="100000"), "samples_per_class=100000"),
    (dict(samples_per_class="2.5"), "invalid int value: '2.5'"),
    (dict(gamma_ratio="-1"), "gamma_ratio=-1.0"),
    (dict(gamma_ratio="nan"), "gamma_ratio=nan"),
    (dict(structure="foo"), "unknown structure 'foo' (--structure)"),
    (dict(batch_size="0"), "batch_size=0 (--batch-size)"),
    (dict(batch_size="-5"), "batch_size=-5"),
    (dict(batch_size="abc"), "invalid int value: 'abc'"),
    (dict(omega="0"), "omega=0"),
    (dict(flops_reduction="1.5"), "flops_reduction=1.5"),
    (dict(flops_reduction="0"), "flops_reduction=0.0"),
    (dict(flops_reduction="-0.2"), "flops_reduction=-0.2"),
    (dict(flops_reduction="nan"), "flops_reduction=nan"),
    (dict(omega="64", flops_reduction="0.6"), "omega=64"),
    (dict(pretrain_epochs="-1"), "pretrain_epochs=-1"),
    (dict(pretrain_epochs="0"), "--pretrain-epochs N"),
    (dict(finetune_epochs="-2"), "finetune_epochs=-2"),
    (dict(seed="-1"), "seed=-1"),
    (dict(per_class="0"), "per_class=0 (--per-class)"),
    (dict(per_class="100000"), "per_class=100000"),
    (dict(test_per_class="0"), "test_per_class=0"),
    (dict(test_per_class="5000"), "test_per_class=5000"),
    (dict(rho="1.0"), "rho=1.0"),
    (dict(rho="-0.1"), "rho=-0.1"),
    (dict(knn="0"), "knn=0"),
    (dict(knn="10"), "knn=10"),
    (dict(max_iter="0"), "max_iter=0 (--max-iter)"),
    (dict(max_iter="1e5"), "invalid int value: '1e5'"),
    (dict(device="foo"), "'foo' is not a device"),
    (dict(device="tpu"), "'tpu'"),
    (dict(device="cuda:7"), "'cuda:7'"),
    (dict(dataset="mnist"), "unknown dataset 'mnist'"),
    (dict(arch="resnet18"), "unknown arch 'resnet18'"),
    (dict(method="magnitude"), "unknown method 'magnitude'"),
    (dict(allocation="layerwise"), "unknown allocation 'layerwise' (--allocation); choose one of: global, uniform"),
    (dict(data_root="/nonexistent/data"), "--data-root '/nonexistent/data'"),
    (dict(pretrained="/nonexistent/base.pt"), "--pretrained '/nonexistent/base.pt'"),
    (dict(latency_repeats="-1"), "latency_repeats=-1"),
    # options of a mode the run does not ask for, and options that exclude each other
    (dict(latency_mode="deployed"), "latency_mode='deployed' (--latency-mode) only applies with a latency budget"),
    (dict(latency_batch_size="8"), "latency_batch_size=8 (--latency-batch-size) only applies"),
    (dict(knn="2"), "knn=2 (--knn) only applies with sGLP-IB (method sglp)"),
    (dict(method="sglp", rho="0.3", knn="2"), "rho=0.3 (--rho) and knn=2 (--knn) exclude each other"),
    (dict(method="l1", max_iter="100"), "max_iter=100 (--max-iter) only applies with a lasso criterion"),
    (dict(method="random", nonnegative=None), "nonnegative=True (--nonnegative) only applies"),
    (dict(method="apib", response="class+output"), "response='class+output' (--response) only applies"),
    (dict(rhoo="0.3"), "unrecognized argument '--rhoo' (did you mean '--rho'?)"),
    (dict(latency_reductoin="0.4"), "(did you mean '--latency-reduction'?)"),
]


@pytest.mark.parametrize("flags, names", RUN_ROWS,
                         ids=[",".join(f"{k}={v}" for k, v in r[0].items()) for r in RUN_ROWS])
def test_run_cli(tmp_path, capsys, flags, names):
    argv = _with(RUN, out=str(tmp_path / "out"), cache_dir=str(tmp_path / "cache"), **flags)
    assert cli.main(argv) == 2
    err = capsys.readouterr().err
    assert names in err and "Traceback" not in err
    assert list(tmp_path.iterdir()) == []


def _checkpoint(tmp_path, kind):
    from paperprune import create_model

    path = tmp_path / "inputs" / f"{kind}.pt"
    path.parent.mkdir()
    if kind == "garbage":
        path.write_bytes(b"not a checkpoint")
        return path, "not a readable PyTorch checkpoint"
    model = create_model("vgg16" if kind == "vgg16" else "resnet56", num_classes=10, in_channels=1)
    state = model.state_dict()
    if kind == "nan":
        state["conv1.weight"][0, 0, 0, 0] = float("nan")
        torch.save(state, path)
        return path, "non-finite weights (1 tensor(s), e.g. 'conv1.weight')"
    if kind == "classes":
        torch.save(create_model("resnet56", num_classes=100, in_channels=1).state_dict(), path)
        return path, "shape mismatch(es), e.g. 'classifier.weight': (100, 64) in the file, (10, 64) in the model"
    torch.save(state, path)
    return path, "missing key(s)"


@pytest.mark.parametrize("kind", ["garbage", "vgg16", "nan", "classes"])
def test_run_cli_bad_pretrained(tmp_path, capsys, kind):
    path, names = _checkpoint(tmp_path, kind)
    before = _files(tmp_path)
    argv = _with(RUN, pretrained=str(path), pretrain_epochs="0", out=str(tmp_path / "out"))
    assert cli.main(argv) == 2
    err = capsys.readouterr().err
    assert str(path) in err and names in err and "Traceback" not in err
    assert _files(tmp_path) == before and not (tmp_path / "out").exists()


def test_run_cli_out_is_a_file(tmp_path, capsys):
    (tmp_path / "taken").write_text("x")
    assert cli.main(_with(RUN, out=str(tmp_path / "taken"))) == 2
    assert "--out" in capsys.readouterr().err and _files(tmp_path) == {"taken": b"x"}


def test_run_cli_out_under_a_file(tmp_path, capsys):
    (tmp_path / "taken").write_text("x")
    assert cli.main(_with(RUN, out=str(tmp_path / "taken" / "run"))) == 2
    err = capsys.readouterr().err
    assert "taken/run" in err and "writable" in err and _files(tmp_path) == {"taken": b"x"}


def test_run_cli_empty_data_root(tmp_path, capsys):
    (tmp_path / "empty").mkdir()
    assert cli.main(_with(RUN, data_root=str(tmp_path / "empty"), out=str(tmp_path / "out"))) == 2
    err = capsys.readouterr().err
    assert "fashion-mnist data not found" in err and str(tmp_path / "empty") in err
    assert [p.name for p in tmp_path.iterdir()] == ["empty"] and not list((tmp_path / "empty").iterdir())


TRAIN_ROWS = [
    (dict(epochs="0"), "--epochs 0"),
    (dict(epocs="3"), "unrecognized argument '--epocs' (did you mean '--epochs'?)"),
    (dict(lr="nan"), "--lr nan"),
    (dict(lr="0"), "--lr 0.0"),
    (dict(batch_size="0"), "--batch-size 0"),
    (dict(weight_decay="-1"), "--weight-decay -1.0"),
    (dict(per_class="0"), "--per-class 0"),
    (dict(per_class="100000"), "per_class=100000"),
    (dict(device="foo"), "invalid choice: 'foo'"),
    (dict(dataset="mnist"), "unknown dataset 'mnist'"),
    (dict(arch="lenet"), "unknown architecture 'lenet'"),
    (dict(data_root="/nonexistent/data"), "--data-root '/nonexistent/data'"),
]


@pytest.mark.parametrize("flags, names", TRAIN_ROWS, ids=[",".join(f"{k}={v}" for k, v in r[0].items())
                                                          for r in TRAIN_ROWS])
def test_train_cli(tmp_path, capsys, flags, names):
    assert cli.main(_with(TRAIN, out=str(tmp_path / "out"), **flags)) == 2
    err = capsys.readouterr().err
    assert names in err and "Traceback" not in err
    assert list(tmp_path.iterdir()) == []


REPRODUCE_ROWS = [
    (["--devices", "7"], "--devices '7'"),
    (["--devices", "a,b"], "--devices 'a,b'"),
    (["--devices", "0,9"], "--devices '0,9'"),
    (["--jobs", "0"], "--jobs 0"),
    (["--jobs", "-3"], "--jobs -3"),
    (["--profile", "huge"], "unknown profile 'huge'"),
    (["--data-root", "/nonexistent/data"], "--data-root '/nonexistent/data'"),
    (["--pretrained-dir", "/nonexistent/ckpts"], "--pretrained-dir '/nonexistent/ckpts'"),
]


@pytest.mark.parametrize("argv, names", REPRODUCE_ROWS, ids=[" ".join(r[0]) for r in REPRODUCE_ROWS])
def test_reproduce_cli(tmp_path, capsys, argv, names):
    full = ["--runs-root", str(tmp_path / "runs"), "--figures", str(tmp_path / "figs")] + argv
    assert reproduce.main(full) == 2
    err = capsys.readouterr().err
    assert names in err and "Traceback" not in err and "--device cpu" not in err
    assert list(tmp_path.iterdir()) == []


# ----------------------------------------------------------------------------- the Python API


@pytest.fixture(scope="module")
def tiny_model():
    from paperprune import create_model

    torch.manual_seed(0)
    return create_model("resnet56", num_classes=4, in_channels=1)


def _loader(images=None, labels=None, n=3, classes=4):
    if images is None:
        images = torch.randn(n * classes, 1, 16, 16)
    if labels is None:
        labels = torch.arange(classes).repeat_interleave(n)
    return [(images, labels)]


def _nan_model(model):
    import copy

    bad = copy.deepcopy(model)
    with torch.no_grad():
        bad.conv1.weight[0, 0, 0, 0] = float("nan")
    return bad


API_ROWS = [
    ("flops_reduction 'half'", dict(flops_reduction="half"), None, "flops_reduction='half' is not a number"),
    ("flops_reduction numpy 1.5", dict(flops_reduction=np.float64(1.5)), None, "flops_reduction=1.5"),
    ("flops_reduction tensor 0", dict(flops_reduction=torch.tensor(0.0)), None, "flops_reduction=0.0"),
    ("samples_per_class 1", dict(samples_per_class=1), None, "samples_per_class=1"),
    ("samples_per_class 'many'", dict(samples_per_class="many"), None, "samples_per_class='many'"),
    ("omega 0", dict(omega=0), None, "omega=0"),
    ("knn 2.5", dict(knn=2.5), None, "knn=2.5"),
    ("max_iter 0", dict(max_iter=0), None, "max_iter=0"),
    ("max_iter 2.5", dict(max_iter=2.5), None, "max_iter=2.5"),
    ("max_iter numpy -1 sglp", dict(max_iter=np.int64(-1), method="sglp"), None, "max_iter=-1"),
    ("max_iter 0 l1", dict(max_iter=0, method="l1"), None, "max_iter=0"),  # refused where no lasso runs too
    ("allocation 'layerwise'", dict(allocation="layerwise"), None,
     "allocation='layerwise' is not known; use 'global' (one level across layers"),
    ("labels -1", {}, lambda: _loader(labels=torch.tensor([-1, 0, 1, 2] * 3)), "label -1 outside"),
    ("labels 9 of 4 classes", {}, lambda: _loader(labels=torch.tensor([9, 0, 1, 2] * 3)), "label 9 outside"),
    ("one-hot labels", {}, lambda: _loader(labels=torch.eye(4).repeat(3, 1)), "one-hot labels"),
    ("float labels 0.5", {}, lambda: _loader(labels=torch.full((12,), 0.5)), "non-integer"),
    ("3-channel images", {}, lambda: _loader(images=torch.randn(12, 3, 16, 16)),
     ("images have 3 channels", "first conv takes 1", "images.mean(1, keepdim=True)")),
    ("3-D images", {}, lambda: _loader(images=torch.randn(12, 16, 16)), ("(12, 16, 16)", "images.unsqueeze(1)")),
    ("channels-last images", {}, lambda: _loader(images=torch.randn(12, 16, 16, 1)),
     ("(12, 16, 16, 1)", "permute(0, 3, 1, 2)")),
    ("a Dataset, not batches", {}, lambda: torch.utils.data.TensorDataset(torch.randn(12, 1, 16, 16),
                                                                          torch.arange(4).repeat(3)),
     ("TensorDataset", "DataLoader(dataset, batch_size=64)")),
    ("one-shot iterator with adapt_bn", dict(adapt_bn=4), lambda: iter(_loader()),
     ("one-shot list_iterator", "re-iterable")),
    # options of a mode the call does not ask for, exclusive options
    ("latency_mode without a latency budget", dict(latency_mode="deployed"), None,
     ("latency_mode='deployed' only applies with a latency budget", "leave latency_mode out")),
    ("latency_batch_size without a latency budget", dict(latency_batch_size=8), None,
     "latency_batch_size=8 only applies"),
    ("knn with l1", dict(knn=3), None, ("knn=3 only applies with sGLP-IB", "method 'l1'")),
    ("rho with knn", dict(method="sglp", rho=0.3, knn=2), None, ("rho=0.3 and knn=2 exclude each other",
                                                                 "pass only one")),
    ("max_iter with l1", dict(max_iter=100), None, "max_iter=100 only applies with a lasso criterion"),
    ("gamma_ratio with stlp", dict(method="stlp", gamma_ratio=1.0), None, "gamma_ratio=1.0 only applies"),
    ("structure with apib", dict(method="apib", structure="taxonomy"), None, "structure='taxonomy' only applies"),
    # heads and layers
    ("classifier a conv that is not the logits", dict(classifier="conv1"), None,
     ("classifier='conv1' gives 16 channels", "does not produce the logits")),
    ("classifier misspelt", dict(classifier="clasifier"), None, ("classifier='clasifier'", "did you mean 'classifier'")),
    ("num_classes disagreeing with the head", dict(num_classes=7), None,
     ("num_classes=7 does not match the classifier 'classifier', which produces 4 logits", "leave num_classes out")),
    ("layers observing the consumer", dict(layers={"layer1.0.conv1": "layer1.0.conv2"}), None,
     ("observe='layer1.0.conv2' mixes the channels of 'layer1.0.conv1'", "observe the module whose output")),
    ("layers observing another width", dict(layers={"layer2.0.conv1": "layer1.0.relu1"}), None,
     ("observe='layer1.0.relu1'", "the 32 channels of 'layer2.0.conv1'")),
    ("layers a string", dict(layers="layer1.0.conv1"), None, ("layers='layer1.0.conv1' is one string",
                                                              "{conv: observe}")),
    ("layers empty", dict(layers={}), None, ("layers={} names no layer", "leave layers out")),
    ("uint8 images", {}, lambda: _loader(images=torch.zeros(12, 1, 16, 16, dtype=torch.uint8)), "torch.uint8"),
    ("NaN images", {}, lambda: _loader(images=torch.full((12, 1, 16, 16), float("nan"))), "non-finite"),
    ("Inf images", {}, lambda: _loader(images=torch.full((12, 1, 16, 16), float("inf"))), "non-finite"),
    ("not (images, labels)", {}, lambda: [torch.randn(4, 1, 16, 16)], "(images, labels)"),
    ("empty data", {}, lambda: [], "no samples"),
    ("one class, apib", dict(method="apib"), lambda: _loader(labels=torch.zeros(12, dtype=torch.long)),
     "3 of the model's 4 classes have fewer than 2"),
    ("one class, sglp", dict(method="sglp"), lambda: _loader(labels=torch.zeros(12, dtype=torch.long)),
     "class 1: 0"),
    ("a single sample of class 3, stlp", dict(method="stlp"),
     lambda: _loader(labels=torch.tensor([0, 1, 2, 3] + [0, 1, 2] * 2 + [0, 1])), "class 3: 1"),
]


@pytest.mark.parametrize("name, kwargs, data, names", API_ROWS, ids=[r[0] for r in API_ROWS])
def test_prune_api(tiny_model, name, kwargs, data, names):
    import paperprune

    before = {k: v.clone() for k, v in tiny_model.state_dict().items()}
    call = dict(method="l1", flops_reduction=0.3, samples_per_class=3, progress=False, input_size=(1, 16, 16))
    call.update(kwargs)
    with pytest.raises(PaperpruneError) as info:
        paperprune.prune(tiny_model, data() if data else _loader(), **call)
    for text in (names,) if isinstance(names, str) else names:
        assert text in str(info.value)
    assert all(torch.equal(before[k], v) for k, v in tiny_model.state_dict().items())


def test_prune_api_nan_weights(tiny_model):
    import paperprune

    with pytest.raises(PaperpruneError, match=r"non-finite weights \(1 tensor\(s\), e.g. 'conv1.weight'\)"):
        paperprune.prune(_nan_model(tiny_model), _loader(), method="l1", flops_reduction=0.3, samples_per_class=3,
                         progress=False)


def test_prune_api_accepts_numpy_and_torch_scalars(tiny_model):
    import paperprune

    _, report = paperprune.prune(tiny_model, _loader(), method="l1", flops_reduction=np.float32(0.3),
                                 samples_per_class=np.int64(3), omega=torch.tensor(2), progress=False)
    assert abs(report.macs_reduction - 0.3) <= 0.01 and report.num_calibration == 12
    _, again = paperprune.prune(tiny_model, _loader(), method="l1", flops_reduction=torch.tensor(0.3),
                                samples_per_class=3, omega=2, progress=False)
    assert again.layers == report.layers


def test_report_says_how_many_images_per_class_were_drawn(tiny_model):
    """samples_per_class=5 asked of data holding 3, 3, 3 and 2 images of the four classes: a warning
    with both numbers, and the report holds what was drawn."""
    import paperprune

    labels = torch.tensor([0, 1, 2, 3] * 2 + [0, 1, 2])
    with pytest.warns(UserWarning, match=r"samples_per_class=5, but the data held only 2 images of its smallest"):
        _, report = paperprune.prune(tiny_model, _loader(images=torch.randn(11, 1, 16, 16), labels=labels),
                                     method="l1", flops_reduction=0.3, samples_per_class=5, progress=False)
    assert report.images_per_class == torch.bincount(labels, minlength=4).tolist() == [3, 3, 3, 2]
    assert report.samples_per_class == 5 and report.num_calibration == 11
    assert "2 to 3 per class (asked 5)" in report.summary()


OTHER_API_ROWS = [
    ("count_flops_params 2-tuple", lambda m: __import__("paperprune.flops").flops.count_flops_params(m, (32, 32)),
     "input_size=(32, 32)"),
    ("count_flops_params 3 channels", lambda m: __import__("paperprune.flops").flops.count_flops_params(m, (3, 32, 32)),
     "input_size=(3, 32, 32) does not fit"),
    ("count_flops_params 'big'", lambda m: __import__("paperprune.flops").flops.count_flops_params(m, "big"),
     "input_size='big'"),
    ("make_loaders per_class 0",
     lambda m: __import__("paperprune.lab.data").lab.data.make_loaders("synthetic", per_class=0),
     "per_class=0"),
    ("make_loaders per_class 100000",
     lambda m: __import__("paperprune.lab.data").lab.data.make_loaders("synthetic", per_class=100000), "per_class=100000"),
    ("DeviceLoader batch_size 0", lambda m: DeviceLoader(torch.zeros(2, 1, 4, 4, dtype=torch.uint8), torch.zeros(2),
                                                         batch_size=0, mean=(0,), std=(1,), train=False),
     "batch_size must be >= 1, got 0"),
    ("resolve_device 'gpu0'", lambda m: __import__("paperprune.utils").utils.resolve_device("gpu0"), "'gpu0'"),
    ("RunConfig lr tensor nan", lambda m: RunConfig(dataset="synthetic", arch="resnet56", method="l1",
                                                    flops_reduction=0.5, pretrain_epochs=1,
                                                    lr=torch.tensor(float("nan"))).validate(), "lr=nan"),
    ("RunConfig nonnegative 'yes'", lambda m: RunConfig(dataset="synthetic", arch="resnet56", method="l1",
                                                        flops_reduction=0.5, pretrain_epochs=1,
                                                        nonnegative="yes").validate(), "nonnegative='yes'"),
    ("curves entry l1:layerwise", lambda m: __import__("paperprune.lab.curves").lab.curves.run(
        "synthetic", "resnet56", "/nonexistent/curves", weights="/nonexistent/base.pt", methods=["l1:layerwise"]),
     "allocation='layerwise' is not known"),
    ("compare_selections allocation 'per-layer'", lambda m: __import__("paperprune.compare").compare.compare_selections(
        m, _loader(), methods=["l1", "random"], allocation="per-layer", progress=False),
     "allocation='per-layer' is not known; use 'global'"),
    ("RunConfig structure taxonomy on cifar-less data", lambda m: RunConfig(
        dataset="synthetic", arch="resnet56", method="l1", flops_reduction=0.5, pretrain_epochs=1,
        structure="tree").validate(), "unknown structure 'tree'"),
]


def _config(**changes):
    return RunConfig(**dict(dict(dataset="synthetic", arch="resnet56", method="l1", flops_reduction=0.5,
                                 pretrain_epochs=1), **changes))


def _importance(model, **options):
    from paperprune.tp import Importance

    return Importance(model, _loader(), samples_per_class=3, input_size=(1, 16, 16), **options)


OTHER_API_ROWS += [
    ("RunConfig latency_mode without a latency budget", lambda m: _config(latency_mode="deployed").validate(),
     ("latency_mode='deployed' (--latency-mode) only applies with a latency budget", "leave latency_mode out")),
    ("RunConfig knn with l1", lambda m: _config(knn=3).validate(), "knn=3 (--knn) only applies with sGLP-IB"),
    ("RunConfig rho with knn", lambda m: _config(method="sglp", rho=0.3, knn=2).validate(),
     "rho=0.3 (--rho) and knn=2 (--knn) exclude each other"),
    ("create_criterion misspelt option", lambda m: __import__("paperprune.criteria").criteria.create_criterion(
        "sglp", rhoo=0.3), ("unknown criterion option 'rhoo'", "did you mean 'rho'")),
    ("Importance misspelt option", lambda m: _importance(m, method="sglp", knnn=2),
     ("unknown criterion option 'knnn'", "did you mean 'knn'")),
    ("Importance knn with stlp", lambda m: _importance(m, method="stlp", knn=2), "knn=2 only applies with sGLP-IB"),
    ("Importance 3-channel images", lambda m: __import__("paperprune.tp").tp.Importance(
        m, _loader(images=torch.randn(12, 3, 16, 16)), method="l1", samples_per_class=3),
     ("images have 3 channels", "first conv takes 1")),
    ("discover include a string", lambda m: __import__("paperprune.discover").discover.discover(
        m, (1, 16, 16), include="inner"), ("include='inner' is one string", "include=('inner',)")),
    ("save_pruned a state dict", lambda m: __import__("paperprune").save_pruned(m.state_dict(), "never.pt"),
     ("given a OrderedDict (a state dict?)", "save_pruned(model, path)")),
    ("prepare_for_inference 3-channel example", lambda m: __import__("paperprune.deploy").deploy.prepare_for_inference(
        m, torch.randn(2, 3, 16, 16)), ("example_input have 3 channels", "first conv takes 1")),
    ("prepare_for_inference an image, not a batch", lambda m: __import__("paperprune.deploy").deploy
     .prepare_for_inference(m, torch.randn(1, 16, 16)), ("(1, 16, 16)", "unsqueeze")),
]


@pytest.mark.parametrize("name, call, names", OTHER_API_ROWS, ids=[r[0] for r in OTHER_API_ROWS])
def test_other_api(tiny_model, tmp_path, monkeypatch, name, call, names):
    monkeypatch.chdir(tmp_path)
    with pytest.raises(PaperpruneError) as info:
        call(tiny_model)
    for text in (names,) if isinstance(names, str) else names:
        assert text in str(info.value)
    assert list(tmp_path.iterdir()) == []


def test_load_pruned_of_a_pickled_model(tiny_model, tmp_path):
    import paperprune

    torch.save(tiny_model, tmp_path / "whole.pt")
    before = _files(tmp_path)
    with pytest.raises(PaperpruneError) as info:
        paperprune.load_pruned(tmp_path / "whole.pt")
    message = str(info.value)
    assert "whole.pt" in message and "torch.save(model)" in message and "save_pruned(model, new_path)" in message
    assert "\x1b[" not in message and "Weights only load failed" not in message
    assert _files(tmp_path) == before


def test_prepare_for_inference_mismatch_prints_nothing(tiny_model, capfd):
    from paperprune.deploy import prepare_for_inference

    with pytest.raises(PaperpruneError):
        prepare_for_inference(tiny_model, torch.randn(2, 3, 16, 16))
    out, err = capfd.readouterr()
    assert out == "" and err == ""


def test_runconfig_accepts_numpy_and_torch_scalars():
    config = RunConfig(dataset="synthetic", arch="resnet56", method="sglp", flops_reduction=np.float32(0.5),
                       pretrain_epochs=np.int64(1), lr=torch.tensor(0.05), knn=np.int32(2), gamma_ratio=np.float64(0.3),
                       nonnegative=np.bool_(True))
    config.validate()
    assert (config.flops_reduction, config.pretrain_epochs, config.knn, config.nonnegative) == (0.5, 1, 2, True)
    assert type(config.lr) is float and abs(config.lr - 0.05) < 1e-7
    json.dumps(config.__dict__)  # plain Python values: the record and the cache key can be written


# ----------------------------------------------------------------------------- damaged stage files

SMALL = dict(dataset="synthetic", arch="resnet56", method="l1", flops_reduction=0.5, pretrain_epochs=1,
             finetune_epochs=1, per_class=8, test_per_class=4, samples_per_class=3, batch_size=24, device="cpu")


@pytest.fixture(scope="module")
def finished(tmp_path_factory):
    """A complete tiny run (out/ and its baseline cache), copied by each damage case."""
    root = tmp_path_factory.mktemp("finished")
    run_experiment(RunConfig(**SMALL), root / "out", cache_dir=root / "cache", progress=False, latency_repeats=1,
                   deployed_latency=False)
    return root


def _damage_json(key):
    def damage(path):
        record = json.loads(path.read_text())
        node = record
        *parents, last = key.split(".")
        for part in parents:
            node = node[part]
        del node[last]
        path.write_text(json.dumps(record))
    return damage


DAMAGE_ROWS = [  # (file, how it is damaged, what the message names)
    ("out/prune.json", _damage_json("report.timings"), "no 'report.timings.statistics_s'"),
    ("out/prune.json", _damage_json("top1_before_finetune"), "no 'top1_before_finetune'"),
    ("out/prune.json", lambda p: p.write_text("{not json"), "is unreadable"),
    ("out/prune.json", lambda p: p.write_text("[1, 2]"), "holds a list"),
    ("out/prune.json", lambda p: p.write_bytes(b"\xff\xfe\x00"), "is unreadable"),
    ("out/pruned.pt", lambda p: p.write_bytes(b"garbage"), "pruned.pt"),
    ("out/config.json", lambda p: p.write_text(""), "config.json is unreadable"),
    ("cache/*/evaluation.json", _damage_json("top1"), "no 'top1'"),
    ("cache/*/evaluation.json", lambda p: p.write_text("null"), "holds a NoneType"),
    ("cache/*/final.pt", lambda p: p.write_bytes(b"garbage"), "not a readable PyTorch checkpoint"),
]


@pytest.mark.parametrize("target, damage, names", DAMAGE_ROWS,
                         ids=[f"{r[0]}-{i}" for i, r in enumerate(DAMAGE_ROWS)])
def test_damaged_stage_file(tmp_path, finished, target, damage, names):
    shutil.copytree(finished, tmp_path, dirs_exist_ok=True)
    (tmp_path / "out" / "run.json").unlink()
    path = next(tmp_path.glob(target))
    damage(path)
    before = _files(tmp_path)
    with pytest.raises(PaperpruneError) as info:
        run_experiment(RunConfig(**SMALL), tmp_path / "out", cache_dir=tmp_path / "cache", progress=False,
                       latency_repeats=1, deployed_latency=False)
    message = str(info.value)
    assert path.name in message and names in message
    after = _files(tmp_path)
    written = {k for k in set(after) | set(before) if after.get(k) != before.get(k)}
    # only the failure record and the lock files' holder lines change
    assert written <= {"out/error.json", "out/.lock", str(next(tmp_path.glob("cache/*/.lock")).relative_to(tmp_path))}
    if target != "out/config.json":  # a run that could not even read its folder's config records nothing
        assert "out/error.json" in written and names in json.loads(after["out/error.json"])["error"]


def test_damaged_run_json_is_named(tmp_path, finished):
    shutil.copytree(finished, tmp_path, dirs_exist_ok=True)
    (tmp_path / "out" / "run.json").write_text('{"schema": 1}')
    with pytest.raises(PaperpruneError, match="run.json is damaged"):
        run_experiment(RunConfig(**SMALL), tmp_path / "out", cache_dir=tmp_path / "cache", progress=False)


def test_failed_run_never_blocks_the_corrected_rerun(tmp_path, finished, capsys):
    """A run that failed after it started (here: a damaged stage file) leaves error.json; the rerun
    with corrected settings discards that run's stages instead of refusing the folder."""
    shutil.copytree(finished, tmp_path, dirs_exist_ok=True)
    (tmp_path / "out" / "run.json").unlink()
    (tmp_path / "out" / "prune.json").write_text("{}")
    with pytest.raises(PaperpruneError):
        run_experiment(RunConfig(**SMALL), tmp_path / "out", cache_dir=tmp_path / "cache", progress=False)
    assert (tmp_path / "out" / "error.json").is_file()
    record = run_experiment(RunConfig(**dict(SMALL, method="random")), tmp_path / "out", cache_dir=tmp_path / "cache",
                            progress=False, latency_repeats=1, deployed_latency=False)
    assert record["config"]["method"] == "random" and "prune" not in record["resumed"]
    assert not (tmp_path / "out" / "error.json").exists()
    assert "discarding the failed run" in capsys.readouterr().err
    # a complete run with another config is refused unless restart=True
    with pytest.raises(PaperpruneError, match="holds a complete run with a different config.*--restart"):
        run_experiment(RunConfig(**dict(SMALL, method="l1")), tmp_path / "out", cache_dir=tmp_path / "cache",
                       progress=False)
    again = run_experiment(RunConfig(**dict(SMALL, method="l1")), tmp_path / "out", cache_dir=tmp_path / "cache",
                           progress=False, latency_repeats=1, deployed_latency=False, restart=True)
    assert again["config"]["method"] == "l1"


def test_samples_per_class_beyond_memory_is_refused_with_the_estimate(tmp_path, monkeypatch):
    import paperprune.lab.experiment as experiment

    monkeypatch.setattr(experiment, "_available_bytes", lambda device: 5 * 2**29)
    config = RunConfig(**dict(SMALL, dataset="fashion-mnist", samples_per_class=1000))
    with pytest.raises(PaperpruneError) as info:
        run_experiment(config, tmp_path / "out", progress=False, deployed_latency=False)
    # 10,000 images x (1x32x32 input + 16x32x32 of the largest layer) x 4 bytes + 2 GiB of tiles
    need = (4 * 10_000 * (1024 + 16 * 1024) + 2 * 2**30) / 2**30
    assert "samples_per_class=1000 (--samples-per-class)" in str(info.value)
    assert f"about {need:.1f} GiB" in str(info.value) and "2.5 GiB are available" in str(info.value)
    assert list(tmp_path.iterdir()) == []
    config = RunConfig(**dict(SMALL, dataset="fashion-mnist", samples_per_class=20))
    experiment._validated(config, tmp_path / "out", 1, False)  # the default calibration fits


# ----------------------------------------------------------------------------- records read back


def _set(key, value):
    def damage(record):
        node = record
        *parents, last = key.split(".")
        for part in parents:
            node = node[int(part)] if isinstance(node, list) else node[part]
        node[last] = value(record) if callable(value) else value
    return damage


RECORD_ROWS = [  # (how run.json is edited, what the message names)
    (_set("pruned.macs", lambda r: 2 * r["baseline"]["macs"]), "pruned.macs is"),
    (_set("pruned.params", lambda r: r["baseline"]["params"] + 1), "above baseline.params"),
    (_set("pruned.top1", 250.0), "pruned.top1 is 250.0, outside [0, 100]"),
    (_set("baseline.top1", -1.0), "baseline.top1 is -1.0"),
    (_set("pruned.macs_reduction", 1.5), "pruned.macs_reduction is 1.5, outside [0, 1)"),
    (_set("layers.0.width_after", 10_000), "layers[0].width_before must be > 0 and width_after in 0..width_before"),
]


@pytest.mark.parametrize("damage, names", RECORD_ROWS, ids=[r[1] for r in RECORD_ROWS])
def test_run_record_values_checked_when_read(tmp_path, finished, damage, names):
    from paperprune.lab.record import read_run
    from paperprune.lab.reporting import load_runs

    shutil.copytree(finished / "out", tmp_path / "out")
    path = tmp_path / "out" / "run.json"
    record = json.loads(path.read_text())
    damage(record)
    path.write_text(json.dumps(record))
    before = _files(tmp_path)
    with pytest.raises(PaperpruneError) as info:
        read_run(path)
    assert "run.json" in str(info.value) and names in str(info.value)
    [run] = load_runs(tmp_path)
    assert run["status"] == "failed" and names in run["error"]
    assert _files(tmp_path) == before


def test_empty_curve_reported_as_empty(tmp_path):
    from paperprune.lab.reporting.curves import curves_report

    record = {"config": {"dataset": "synthetic", "arch": "resnet56"}, "points": []}
    with pytest.warns(UserWarning, match="holds no points \\(an empty curve\\)"):
        assert curves_report(record, tmp_path) == {}
    assert list(tmp_path.iterdir()) == []
