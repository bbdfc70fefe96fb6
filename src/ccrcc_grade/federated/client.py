"""One site of the federation: a Flower client that trains on its own WORK folder only.

The local training is `train`'s own (``model.train``: the same network, data, augmentation,
class-weighted loss, seed; one SGD optimizer per round, as FedAvg prescribes); FedProx adds
mu/2 * ||w - w_global||^2 to the loss (Li et al., MLSys 2020). What leaves the site is exactly what
``SiteClient`` returns (the Flower client API has no other way out): the model's tensors (the
state dict in a fixed key order) and aggregate numbers - training crops and loss, validation
patients, grade counts, AUC and loss - plus, once, the preprocessing settings as text so the
server can refuse a site ingested differently. Never a pixel, never a patient id; a test captures
every message to prove it.

Run by ``federated`` (one process per site) or by hand at a hospital:
``ccrcc-grade federated SITE_WORK --join SERVER:PORT --phase P [--root-certificates ca.pem]``.
"""

from __future__ import annotations

import dataclasses
import json
import os
import pickle
import sys
import time
from pathlib import Path

import numpy as np
import torch
from torch import nn

from ccrcc_grade.core.config import TrainConfig, to_dict
from ccrcc_grade.core.errors import CcrccError
from ccrcc_grade.core.fileio import atomic_write
from ccrcc_grade.model.data import class_weights
from ccrcc_grade.model.inference import amp_dtype, resolve_device
from ccrcc_grade.model.registry import create_model, uses_imagenet_norm
from ccrcc_grade.model.train import Dist, load_data, train_one_epoch, validate

CAPTURE_ENV = "CCRCC_FL_CAPTURE"  # a folder: every message the client sends is also written there (tests)


def state_keys(model: nn.Module) -> list[str]:
    return list(model.state_dict().keys())


def to_arrays(model: nn.Module) -> list[np.ndarray]:
    return [v.detach().cpu().numpy().copy() for v in model.state_dict().values()]


def load_arrays(model: nn.Module, arrays: list[np.ndarray]) -> None:
    """Set a model's state from the federation's tensors (same keys, order and shapes)."""
    state = model.state_dict()
    if len(arrays) != len(state):
        raise CcrccError(f"the server sent {len(arrays)} tensors, the {type(model).__name__} has {len(state)}")
    new = {}
    for (k, v), a in zip(state.items(), arrays):
        if tuple(a.shape) != tuple(v.shape):
            raise CcrccError(f"the server's tensor {k} has shape {tuple(a.shape)}, the model's {tuple(v.shape)}")
        t = torch.from_numpy(np.asarray(a))
        new[k] = t.round().to(v.dtype) if not v.dtype.is_floating_point else t.to(v.dtype)
    model.load_state_dict(new)


class SiteTrainer:
    """A site's data and model: local epochs from the global weights, validation scores."""

    def __init__(self, cfg: TrainConfig):
        self.cfg = dataclasses.replace(cfg, progress=False)
        self.cfg.validate()
        self.device = resolve_device(cfg.device)
        if cfg.num_threads:
            torch.set_num_threads(cfg.num_threads)
        self.cache, self.splits, self.train_set, self.val_set = load_data(self.cfg)
        torch.manual_seed(cfg.seed)
        self.model, _ = create_model(cfg.model, cfg.weights)
        self.model.to(self.device)
        if cfg.channels_last:
            self.model = self.model.to(memory_format=torch.channels_last)
        self.normalize = uses_imagenet_norm(cfg.weights)
        self.weights = class_weights(self.train_set.labels).to(self.device) if cfg.class_weighted else None
        self.amp = amp_dtype(self.device, cfg.amp)
        self.preprocess = json.dumps(
            {**to_dict(self.cache.preprocess), "image_size": cfg.image_size, "normalize": self.normalize},
            sort_keys=True,
        )

    def fit(self, arrays: list[np.ndarray], server_round: int, local_epochs: int, mu: float) -> dict:
        load_arrays(self.model, arrays)
        global_params = [p.detach().clone() for p in self.model.parameters()]
        optimizer = torch.optim.SGD(
            self.model.parameters(), lr=self.cfg.lr, momentum=self.cfg.momentum, weight_decay=self.cfg.weight_decay
        )
        ce = nn.CrossEntropyLoss(weight=self.weights)

        def loss_fn(logits: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
            loss = ce(logits, y)
            if mu > 0:  # FedProx's proximal term keeps the local model near the global one
                loss = loss + mu / 2 * sum(((p - g) ** 2).sum() for p, g in zip(self.model.parameters(), global_params))
            return loss

        cfg = dataclasses.replace(self.cfg, epochs=server_round * local_epochs)
        stats = {}
        for e in range(local_epochs):
            epoch = (server_round - 1) * local_epochs + e + 1  # the shuffling/augmentation seed of `train`
            stats = train_one_epoch(
                self.model,
                optimizer,
                loss_fn,
                self.train_set,
                cfg,
                epoch,
                self.device,
                self.amp,
                self.normalize,
                Dist(),
            )
        return {"train_loss": float(stats["train_loss"]), "train_crops": len(self.train_set)}

    def evaluate(self, arrays: list[np.ndarray]) -> dict:
        load_arrays(self.model, arrays)
        val, (pat_y, _) = validate(
            self.model, self.val_set, self.cfg, self.device, self.amp, self.normalize, self.weights
        )
        out = {
            "val_loss": float(val["val_loss"]),
            "val_patients": int(len(pat_y)),
            "val_high": int(np.sum(pat_y == 1)),
        }
        if val["val_auc"] is not None:
            out["val_auc"] = float(val["val_auc"])
        return out


def make_client(trainer: SiteTrainer, site: str) -> object:
    """The Flower NumPyClient of a site (Flower imported here: only federated runs need it)."""
    import flwr as fl

    capture = os.environ.get(CAPTURE_ENV)
    count = [0]

    def sent(kind: str, payload: object) -> object:
        if capture:  # the test's message capture: exactly what Flower receives from us
            count[0] += 1
            path = Path(capture) / f"{site}-{os.getpid()}-{count[0]:04d}-{kind}.pkl"
            atomic_write(path, lambda fh: pickle.dump(payload, fh))
        return payload

    class SiteClient(fl.client.NumPyClient):
        def get_properties(self, config: dict) -> dict:
            return sent("properties", {"preprocess": trainer.preprocess, "model": trainer.cfg.model})

        def get_parameters(self, config: dict) -> list[np.ndarray]:
            return sent("parameters", to_arrays(trainer.model))

        def fit(self, parameters: list[np.ndarray], config: dict) -> tuple:
            t0 = time.perf_counter()
            rnd = int(config.get("server_round", 1))
            mu = float(config.get("proximal_mu", config.get("mu", 0.0)))  # FedProx's strategy sends proximal_mu
            m = trainer.fit(parameters, rnd, int(config.get("local_epochs", 1)), mu)
            m["site"] = site
            m["seconds"] = round(time.perf_counter() - t0, 2)
            if rnd == 1 or config.get("send_preprocess"):
                m["preprocess"] = trainer.preprocess
            print(f"site {site}: round {rnd} trained ({m['train_loss']:.4f} loss, {m['seconds']} s)", flush=True)
            return sent("fit", (to_arrays(trainer.model), len(trainer.train_set), m))

        def evaluate(self, parameters: list[np.ndarray], config: dict) -> tuple:
            m = trainer.evaluate(parameters)
            m["site"] = site
            return sent("evaluate", (m["val_loss"], m["val_patients"], m))

    return SiteClient()


def run_client(
    cfg: TrainConfig, server: str, site: str, root_certificates: Path | None = None, max_wait: float = 60.0
) -> int:
    """Join a federation and train until the server says stop; 0 when it finished, 1 (one line on
    stderr) when the server went away - nothing at the site is lost or changed either way."""
    import flwr as fl

    trainer = SiteTrainer(cfg)
    print(
        f"site {site}: {len(trainer.train_set)} training crops of {len(trainer.splits['train'])} patients, "
        f"{len(trainer.splits['val'])} validation patients; joining {server}",
        flush=True,
    )
    certs = Path(root_certificates).read_bytes() if root_certificates else None
    try:
        fl.client.start_client(
            server_address=server,
            client=make_client(trainer, site).to_client(),
            root_certificates=certs,
            insecure=certs is None,
            max_retries=3,
            max_wait_time=max_wait,
        )
    except Exception as exc:  # noqa: BLE001 - grpc raises many kinds; the site stops cleanly with one line
        print(f"site {site}: the server at {server} went away ({exc.__class__.__name__}); stopped", file=sys.stderr)
        return 1
    print(f"site {site}: federation finished", flush=True)
    return 0


def main(argv: list[str] | None = None) -> int:
    """``python -m ccrcc_grade.federated.client CONFIG_JSON SERVER SITE`` (what `federated` starts)."""
    import argparse

    a = argparse.ArgumentParser(prog="ccrcc-grade federated client")
    a.add_argument("config")
    a.add_argument("server")
    a.add_argument("site")
    a.add_argument("--root-certificates")
    a.add_argument("--max-wait", type=float, default=60.0)
    ns = a.parse_args(argv)
    from ccrcc_grade.core.config import from_dict

    cfg = from_dict(TrainConfig, json.loads(Path(ns.config).read_text()))
    try:
        return run_client(cfg, ns.server, ns.site, ns.root_certificates, ns.max_wait)
    except CcrccError as exc:
        print(f"site {ns.site}: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
