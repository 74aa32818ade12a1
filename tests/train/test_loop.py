"""The shared training loop: selection of the best epoch, gradient hooks, resume, gathered predictions."""

import torch
from torch.utils.data import DataLoader, TensorDataset

from trustmed.train import fit, make_accelerator, predict
from trustmed.utils import seed_everything


def _problem(seed=0):
    seed_everything(seed)
    x = torch.randn(96, 4)
    y = (x[:, 0] + 0.5 * x[:, 1] > 0).float()
    model = torch.nn.Sequential(torch.nn.Linear(4, 8), torch.nn.ReLU(), torch.nn.Linear(8, 1))
    loader = DataLoader(
        TensorDataset(x, y), batch_size=16, shuffle=True, generator=torch.Generator().manual_seed(seed)
    )
    return model, loader


def _loss(model, batch):
    x, y = batch
    return torch.nn.functional.binary_cross_entropy_with_logits(model(x).squeeze(1), y)


def test_select_keeps_best_epoch_weights():
    model, loader = _problem()
    scores = iter([0.1, 0.9, 0.2, 0.3])
    snapshots = []

    def evaluate(m):
        snapshots.append({k: v.clone() for k, v in m.state_dict().items()})
        return {"val_auc": next(scores)}

    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    result = fit(model, opt, loader, _loss, epochs=4, evaluate=evaluate, select="val_auc")
    assert result.best_epoch == 2 and result.best_score == 0.9
    for key, value in model.state_dict().items():
        assert torch.equal(value, snapshots[1][key])
    assert result.epochs == 4 and result.samples_seen == 4 * 96


def test_grad_hook_freezes_masked_parameters():
    model, loader = _problem()
    before = model[0].weight.detach().clone()

    def hook(m):
        m[0].weight.grad.zero_()

    fit(model, torch.optim.SGD(model.parameters(), lr=0.1), loader, _loss, epochs=2, grad_hook=hook)
    assert torch.equal(model[0].weight.cpu(), before)


def _run(tmp_path, epochs, resume):
    model, loader = _problem()
    opt = torch.optim.Adam(model.parameters(), lr=0.01)
    fit(model, opt, loader, _loss, epochs=epochs, checkpoint_dir=tmp_path, resume=resume)
    return model


def test_resume_reaches_same_weights(tmp_path):
    full = _run(tmp_path / "a", 4, resume=False)
    _run(tmp_path / "b", 2, resume=False)  # "crash" after two epochs
    resumed = _run(tmp_path / "b", 4, resume=True)
    for (k, v), (_, w) in zip(full.state_dict().items(), resumed.state_dict().items(), strict=True):
        assert torch.allclose(v, w, atol=1e-6), k


def test_predict_gathers_every_sample_once():
    x = torch.arange(10, dtype=torch.float32).unsqueeze(1)
    loader = DataLoader(TensorDataset(x, torch.arange(10)), batch_size=3)
    out = predict(torch.nn.Identity(), loader, lambda m, b: {"x": m(b[0]).squeeze(1), "index": b[1]})
    assert out["index"].tolist() == list(range(10))
    assert torch.equal(out["x"], x.squeeze(1))


def test_runs_with_other_precision_in_one_process():
    # Accelerate keeps one global state per process; the demo trains several models in a row with
    # different settings (bf16 on a GPU for the classifier, none for others).
    first = make_accelerator("bf16", cpu=True)
    assert first.mixed_precision == "bf16"
    assert make_accelerator("no", cpu=True).mixed_precision == "no"
    assert make_accelerator(cpu=True).mixed_precision == "no"  # None keeps the current setting
