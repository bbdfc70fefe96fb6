"""The federation's server: Flower's FedAvg or FedProx, plus what a run folder needs.

Flower aggregates; ``FederationState`` turns its rounds into a run folder that `evaluate`,
`predict`, `export` and `serve` load like any `train` run:

* after every aggregated round, RUN/last.pt holds the global weights, the round and the history
  (the last complete round: a federation whose server went away resumes from it, ``--resume``);
* validation-based model selection done federated: each site reports its validation patients'
  AUC and loss (numbers, never patients); the round with the best patient-weighted mean AUC
  (ties: lower loss, as `train`) becomes RUN/best.pt, in `train`'s checkpoint format;
* RUN/log.csv has one row per round (weighted training loss, validation AUC and loss per site).

The server refuses to aggregate sites whose preprocessing differs (they send its settings as
text in their first round's metrics): averaging weights trained on differently cropped images
makes a model of neither.
"""

from __future__ import annotations

import json
import math
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np

from ccrcc_grade.core.errors import CcrccError
from ccrcc_grade.core.fileio import atomic_torch_save, atomic_write_csv
from ccrcc_grade.core.paths import RunDir
from ccrcc_grade.core.threshold import DEFAULT_POLICY
from ccrcc_grade.federated.client import load_arrays, to_arrays
from ccrcc_grade.model.inference import make_checkpoint
from ccrcc_grade.model.registry import create_model

LOG_FIELDS = ["round", "train_loss", "val_loss", "val_auc", "sites", "seconds"]
STRATEGIES = ("fedavg", "fedprox")


class FederationState:
    """Rounds -> RUN/last.pt, RUN/best.pt, RUN/log.csv, and the history kept for federation.json."""

    def __init__(self, run: Path, model_name: str, meta: dict, resume: dict | None = None):
        self.run, self.meta = Path(run), meta
        self.model, _ = create_model(model_name, "none")
        self.offset = int(resume["round"]) if resume else 0
        self.history: list[dict] = list(resume["history"]) if resume else []
        self.best_score = tuple(resume["best_score"]) if resume else (-math.inf, -math.inf)
        self.best_round = int(resume["best_round"]) if resume else 0
        self.preprocess: str | None = resume.get("preprocess") if resume else None
        self.arrays: list[np.ndarray] | None = None
        self.t0 = time.perf_counter()
        self.received_keys: set[str] = set()  # every metric name a site sent (federation.json)

    def checkpoint_meta(self) -> dict:
        """The run's checkpoint metadata; a server without data (--serve) takes the preprocessing
        from the sites (they send its settings in round 1), so `evaluate --cohort` and `predict`
        crop new images exactly as the sites did."""
        meta = dict(self.meta)
        if "preprocess" not in meta and self.preprocess:
            meta["preprocess"] = json.loads(self.preprocess)
        return meta

    def check_preprocess(self, texts: dict[str, str]) -> None:
        if self.preprocess is None and texts:
            self.preprocess = next(iter(texts.values()))
        for site, t in texts.items():
            if t != self.preprocess:
                mine, theirs = json.loads(self.preprocess), json.loads(t)
                differ = ", ".join(f"{k} {theirs.get(k)} vs {v}" for k, v in mine.items() if theirs.get(k) != v)
                raise CcrccError(f"site {site!r} was ingested with other preprocessing than the federation ({differ})")

    def on_fit(self, rnd: int, arrays: list[np.ndarray], per_site: dict[str, dict]) -> None:
        self.arrays = arrays
        n = sum(m.get("train_crops", 0) for m in per_site.values()) or 1
        self.history.append(
            {
                "round": self.offset + rnd,
                "train_loss": sum(m["train_loss"] * m.get("train_crops", 0) for m in per_site.values()) / n,
                "fit": per_site,
            }
        )
        for m in per_site.values():
            self.received_keys |= set(m)

    def on_evaluate(self, rnd: int, per_site: dict[str, dict]) -> dict:
        with_auc = [m for m in per_site.values() if "val_auc" in m]
        n_auc = sum(m["val_patients"] for m in with_auc)
        auc = sum(m["val_auc"] * m["val_patients"] for m in with_auc) / n_auc if n_auc else None
        n = sum(m["val_patients"] for m in per_site.values()) or 1
        loss = sum(m["val_loss"] * m["val_patients"] for m in per_site.values()) / n
        for m in per_site.values():
            self.received_keys |= set(m)
        row = self.history[-1] if self.history and self.history[-1]["round"] == self.offset + rnd else {}
        row.update(val_auc=auc, val_loss=loss, evaluate=per_site, seconds=round(time.perf_counter() - self.t0, 1))
        score = (-math.inf if auc is None else auc, -loss)
        improved = score > self.best_score
        if improved and self.arrays is not None:
            self.best_score, self.best_round = score, self.offset + rnd
            load_arrays(self.model, self.arrays)
            meta = {
                **self.checkpoint_meta(),
                "epoch": self.best_round,
                "best_epoch": self.best_round,
                "val": {"val_auc": auc, "val_loss": loss},
                "threshold": DEFAULT_POLICY.threshold,
                "threshold_policy": DEFAULT_POLICY.to_dict(),
                "federated": {"round": self.best_round},
            }
            atomic_torch_save(make_checkpoint(self.model, meta), RunDir(self.run).best)
        self._save_last(rnd)
        self._write_log()
        print(
            f"round {self.offset + rnd}: val AUC {'-' if auc is None else f'{auc:.3f}'} loss {loss:.4f} "
            f"({len(per_site)} sites)" + (" *" if improved else ""),
            flush=True,
        )
        return {"val_auc": auc if auc is not None else float("nan"), "val_loss": loss}

    def _save_last(self, rnd: int) -> None:
        if self.arrays is None:
            return
        load_arrays(self.model, self.arrays)
        last = make_checkpoint(self.model, {**self.checkpoint_meta(), "epoch": self.offset + rnd})
        last.update(
            round=self.offset + rnd,
            history=self.history,
            best_score=list(self.best_score),
            best_round=self.best_round,
            preprocess=self.preprocess,
            federated_resume=True,
        )
        atomic_torch_save(last, RunDir(self.run).last)

    def _write_log(self) -> None:
        atomic_write_csv(
            RunDir(self.run).log,
            LOG_FIELDS,
            (
                {
                    "round": h["round"],
                    "train_loss": h.get("train_loss"),
                    "val_loss": h.get("val_loss"),
                    "val_auc": h.get("val_auc"),
                    "sites": len(h.get("fit", {})),
                    "seconds": h.get("seconds"),
                }
                for h in self.history
            ),
        )

    def initial_arrays(self, resume: dict | None, seed: int, model_name: str, weights: str) -> list[np.ndarray]:
        """The global weights of round 1: the resumed round's, else a fresh model (seed, weights)."""
        import torch

        if resume:
            return [v.numpy() for v in resume["state_dict"].values()]
        torch.manual_seed(seed)
        model, _ = create_model(model_name, weights)
        return to_arrays(model)


def _per_site(results: list) -> dict[str, dict]:
    out = {}
    for _, res in results:
        m = dict(res.metrics)
        out[str(m.pop("site", f"site{len(out) + 1}"))] = m
    return out


def make_strategy(
    name: str,
    n_sites: int,
    state: FederationState,
    initial: list[np.ndarray],
    fit_config: Callable[[int], dict],
    mu: float,
) -> object:
    """Flower's FedAvg / FedProx, every site in every round, with ``state``'s hooks."""
    import flwr as fl
    from flwr.common import ndarrays_to_parameters, parameters_to_ndarrays

    if name not in STRATEGIES:
        raise CcrccError(f"--strategy must be {' or '.join(STRATEGIES)}, got {name!r}")
    base = fl.server.strategy.FedProx if name == "fedprox" else fl.server.strategy.FedAvg

    class Federation(base):
        def aggregate_fit(self, server_round: int, results: list, failures: list) -> tuple:
            if failures or len(results) < n_sites:
                raise CcrccError(
                    f"round {state.offset + server_round}: {len(results)} of {n_sites} sites answered "
                    f"({len(failures)} failed); the last complete round is kept (--resume continues)"
                )
            per_site = _per_site(results)
            state.check_preprocess({s: m.pop("preprocess") for s, m in per_site.items() if "preprocess" in m})
            params, metrics = super().aggregate_fit(server_round, results, failures)
            if params is not None:
                state.on_fit(server_round, parameters_to_ndarrays(params), per_site)
            return params, metrics

        def aggregate_evaluate(self, server_round: int, results: list, failures: list) -> tuple:
            if not results:
                return None, {}
            loss, _ = super().aggregate_evaluate(server_round, results, failures)
            return loss, state.on_evaluate(server_round, _per_site(results))

    kw = {"proximal_mu": mu} if name == "fedprox" else {}
    return Federation(
        min_fit_clients=n_sites,
        min_evaluate_clients=n_sites,
        min_available_clients=n_sites,
        accept_failures=False,
        initial_parameters=ndarrays_to_parameters(initial),
        on_fit_config_fn=fit_config,
        **kw,
    )


def run_server(
    address: str,
    rounds: int,
    strategy: object,
    certificates: tuple[Path, Path, Path] | None = None,
) -> None:
    """Flower's gRPC server on ``address`` for ``rounds`` rounds (blocking)."""
    import flwr as fl

    certs = tuple(Path(c).read_bytes() for c in certificates) if certificates else None
    fl.server.start_server(
        server_address=address,
        config=fl.server.ServerConfig(num_rounds=rounds, round_timeout=None),
        strategy=strategy,
        certificates=certs,
    )
