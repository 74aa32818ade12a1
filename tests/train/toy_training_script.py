"""A tiny training run through the shared loop, used by the distributed and crash-safety tests.

Run as ``python toy_training_script.py OUT EPOCHS BATCH [--resume] [--sleep S]`` or under torchrun.
Writes ``OUT/result.json`` (validation predictions, metrics, final weights) from the main process.
"""

import json
import sys
import time
from pathlib import Path

import torch
from torch.utils.data import DataLoader, TensorDataset

from trustmed.train import fit, make_accelerator, predict
from trustmed.utils import seed_everything


def main() -> None:
    out, epochs, batch = Path(sys.argv[1]), int(sys.argv[2]), int(sys.argv[3])
    resume = "--resume" in sys.argv
    sleep = float(sys.argv[sys.argv.index("--sleep") + 1]) if "--sleep" in sys.argv else 0.0
    seed_everything(0)
    x = torch.randn(256, 6)
    y = (x[:, 0] - x[:, 1] + 0.3 * x[:, 2] > 0).float()
    x_val = torch.randn(101, 6)  # odd size: distributed samplers pad the last batch
    y_val = (x_val[:, 0] - x_val[:, 1] + 0.3 * x_val[:, 2] > 0).float()
    model = torch.nn.Sequential(torch.nn.Linear(6, 16), torch.nn.Tanh(), torch.nn.Linear(16, 1))
    accelerator = make_accelerator(cpu=True)
    loader = DataLoader(TensorDataset(x, y), batch_size=batch, shuffle=True)
    val_loader = DataLoader(TensorDataset(x_val, y_val, torch.arange(101)), batch_size=16)

    def loss_fn(m, b):
        if sleep:
            time.sleep(sleep)
        return torch.nn.functional.binary_cross_entropy_with_logits(m(b[0]).squeeze(1), b[1])

    def evaluate(m):
        out_ = predict(
            m, val_loader, lambda mm, b: {"s": mm(b[0]).squeeze(1), "i": b[2]}, accelerator=accelerator
        )
        acc = ((out_["s"] > 0).float() == y_val[out_["i"].long()]).float().mean()
        return {"val_acc": float(acc)}

    opt = torch.optim.SGD(model.parameters(), lr=0.2, momentum=0.9)
    fit(
        model,
        opt,
        loader,
        loss_fn,
        epochs=epochs,
        accelerator=accelerator,
        evaluate=evaluate,
        checkpoint_dir=out / "ckpt",
        resume=resume,
    )
    preds = predict(
        model, val_loader, lambda mm, b: {"s": mm(b[0]).squeeze(1), "i": b[2]}, accelerator=accelerator
    )
    if accelerator.is_main_process:
        weights = {k: v.tolist() for k, v in accelerator.unwrap_model(model).state_dict().items()}
        result = {
            "ids": preds["i"].long().tolist(),
            "scores": preds["s"].tolist(),
            "weights": weights,
            "world_size": accelerator.num_processes,
        }
        (out / "result.json").write_text(json.dumps(result))


if __name__ == "__main__":
    main()
