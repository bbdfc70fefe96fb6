"""The multi-centre commands of the CLI: `federated` and `recalibrate` (their parsers live here,
beside their handlers, so that ``cli.build_parser`` does not grow further)."""

from __future__ import annotations

import argparse
from pathlib import Path

from ccrcc_grade.core.errors import CcrccError


def _train_config(a: argparse.Namespace) -> object:
    from ccrcc_grade.core.config import TrainConfig

    return TrainConfig(
        phase=a.phase,
        model=a.model,
        weights=a.weights,
        lr=a.lr,
        batch_size=a.batch_size,
        image_size=a.image_size,
        repeats=a.repeats,
        device=a.device,
        seed=a.seed,
        progress=not a.no_progress,
    )


def cmd_federated(a: argparse.Namespace) -> None:
    from ccrcc_grade.federated.run import FederatedOptions, federated, join, serve_only

    opts = FederatedOptions(
        rounds=a.rounds,
        local_epochs=a.local_epochs,
        strategy=a.strategy,
        mu=a.mu,
        ratios=a.ratios,
        compare=not a.no_compare,
        site_patience=a.site_patience,
    )
    cfg = _train_config(a)
    if a.join:
        if len(a.inputs) != 1:
            raise CcrccError(f"--join takes this site's one WORK folder, got {len(a.inputs)}")
        code = join(Path(a.inputs[0]), a.join, cfg, a.root_certificates)
        if code:
            raise CcrccError(f"the server at {a.join} went away; this site stopped (nothing here was changed)")
        return
    if not a.out:
        raise CcrccError("federated needs --out DIR (the federated run folder)")
    if a.serve:
        if a.inputs:
            raise CcrccError("--serve runs the server alone: it takes no WORK or cohort (the sites --join it)")
        if not a.sites or a.sites < 2:
            raise CcrccError("--serve needs --sites N (>= 2): how many sites the server waits for")
        certs = tuple(Path(c) for c in a.certificates) if a.certificates else None
        fed = serve_only(a.serve, a.sites, Path(a.out), cfg, opts, certs, a.resume)
    else:
        if not a.inputs:
            raise CcrccError("federated needs a cohort (--simulate) or two or more site WORK folders")
        fed = federated(a.inputs, a.out, cfg, opts, a.simulate, a.resume, a.size, a.bootstrap)
    print(federation_summary(fed, Path(a.out)))


def federation_summary(fed: dict, out: Path) -> str:
    """The lines `federated` ends with: where the model is, its round, its pooled test AUC."""
    lines = [f"federated model: {out} (best round {fed['best_round']} of {fed['rounds']}; federation.json)"]
    auc = (fed.get("test") or {}).get("auc") or {}
    if auc.get("value") is not None:
        ci = auc.get("ci95")
        ci_text = f" (95% CI {ci[0]:.3f}-{ci[1]:.3f})" if ci and all(v == v for v in ci) else ""
        lines.append(f"pooled test patients: {fed['test']['patients']}, AUC {auc['value']:.3f}{ci_text}")
    if "comparison" in fed:
        lines.append(f"federated vs centralised vs each site alone: {out / 'comparison.md'}")
    return "\n".join(lines)


def cmd_recalibrate(a: argparse.Namespace) -> None:
    from ccrcc_grade.model.recalibrate import recalibrate_command

    print(recalibrate_command(a.run, a.cohort, a.out, a.method, a.alpha))


def add_commands(sub: argparse._SubParsersAction, make: object) -> None:
    """Add `federated` and `recalibrate` to the CLI's sub-commands (``make`` is cli._sub)."""
    from ccrcc_grade.core.config import PreprocessConfig, TrainConfig
    from ccrcc_grade.federated.run import FederatedOptions

    tc, fo = TrainConfig(), FederatedOptions()
    s = make(sub, "federated", "train one model across centres without sharing images (Flower)")
    s.add_argument(
        "inputs",
        nargs="*",
        help="--simulate: one cohort (raw or WORK) whose center column makes the sites; else the sites' "
        "ingested and split WORK folders (or, with --join, this site's one)",
    )
    s.add_argument("--out", help="the federated run folder (best.pt, config.json, eval-test/, federation.json)")
    s.add_argument("--phase", default=tc.phase, help="the phase to train on")
    s.add_argument("--rounds", type=int, default=fo.rounds, help="federated rounds")
    s.add_argument("--local-epochs", type=int, default=fo.local_epochs, help="epochs each site trains per round")
    s.add_argument("--strategy", choices=["fedavg", "fedprox"], default=fo.strategy, help="Flower's aggregation")
    s.add_argument("--mu", type=float, default=fo.mu, help="FedProx's proximal weight")
    s.add_argument("--simulate", action="store_true", help="sites = the cohort's centres, on this machine")
    s.add_argument("--ratios", default=fo.ratios, help="--simulate: each site's train:val:test patient split")
    s.add_argument("--size", type=int, default=PreprocessConfig.size, help="--simulate on a raw cohort: crop size")
    s.add_argument("--no-compare", action="store_true", help="--simulate: skip the centralised and single-site models")
    s.add_argument("--resume", action="store_true", help="continue an interrupted federation in --out from last.pt")
    s.add_argument(
        "--site-patience",
        type=float,
        default=fo.site_patience,
        help="seconds a site waits for a silent server (3 tries) before it stops cleanly",
    )
    s.add_argument("--serve", metavar="HOST:PORT", help="across machines: run the server alone on this address")
    s.add_argument("--sites", type=int, help="with --serve: how many sites take part")
    s.add_argument("--join", metavar="HOST:PORT", help="across machines: this site's WORK joins the server there")
    s.add_argument("--certificates", nargs=3, metavar=("CA", "CERT", "KEY"), help="--serve: TLS (PEM files)")
    s.add_argument("--root-certificates", metavar="CA", help="--join: the CA that signed the server's certificate")
    s.add_argument("--model", default=tc.model, help="resnet34 or se_resnet34")
    s.add_argument("--weights", default=tc.weights, help="imagenet | none | PATH (the starting weights)")
    s.add_argument("--lr", type=float, default=tc.lr, help="SGD learning rate of the local training")
    s.add_argument("--batch-size", type=int, default=tc.batch_size, help="local batch size")
    s.add_argument("--image-size", type=int, default=tc.image_size, help="network input size (pixels)")
    s.add_argument("--repeats", type=int, default=tc.repeats, help="augmented copies per crop per local epoch")
    s.add_argument("--device", default=tc.device, help="auto, cpu, cuda or cuda:N")
    s.add_argument("--seed", type=int, default=tc.seed, help="random seed (initial weights, splits, shuffling)")
    s.add_argument("--bootstrap", type=int, default=2000, help="bootstrap resamples of the CIs")
    s.add_argument("--no-progress", action="store_true", help="no progress bars")
    s.set_defaults(func=cmd_federated)

    s = make(sub, "recalibrate", "update a model's calibration for a new site (closed testing); RUN is untouched")
    s.add_argument("run", help="the model's run folder (or its best.pt)")
    s.add_argument("--cohort", required=True, help="the new site's patients: ingested WORK or raw cohort")
    s.add_argument("--out", required=True, help="the new run folder (a model version of its own)")
    s.add_argument(
        "--method",
        default="auto",
        choices=["auto", "keep", "intercept", "logistic", "refit"],
        help="auto: the closed test chooses; else this update",
    )
    s.add_argument("--alpha", type=float, default=0.05, help="level of the closed test's likelihood-ratio tests")
    s.set_defaults(func=cmd_recalibrate)
