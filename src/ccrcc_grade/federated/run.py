"""``ccrcc-grade federated``: one model from several sites' data without pooling the images.

Modes (one command each):

* ``federated COHORT --simulate --out DIR``: the cohort (raw, ingested here, or a WORK folder)
  is cut into one site per value of its ``center`` column (DIR/sites/<centre>/work, each with its
  own patient split); a Flower server in this process and one client process per site, each
  reading only its own WORK folder. Then, on the same pooled test patients of every site:
  federated vs centralised (all sites' training patients pooled) vs each site alone, with DeLong
  tests and CIs (DIR/comparison.md, DIR/federation.json, DIR/compare/).
* ``federated WORK_A WORK_B ... --out DIR``: the same with site WORK folders given (each split
  already, ``ccrcc-grade split``), on this machine.
* across machines: ``federated --serve 0.0.0.0:8080 --sites 3 --out DIR --phase P`` at the
  coordinating centre, ``federated SITE_WORK --join HOST:8080 --phase P`` at each hospital (TLS:
  ``--certificates ca.pem server.pem server.key`` / ``--root-certificates ca.pem``).

DIR is a run folder like `train`'s (best.pt, last.pt while unfinished, config.json, log.csv,
train_summary.json, eval-test/ on the pooled test patients) plus federation.json: the sites and
their patients per split, the rounds and their per-site numbers, and what was exchanged.
"""

from __future__ import annotations

import dataclasses
import json
import os
import subprocess
import sys
import time
from pathlib import Path

from ccrcc_grade.core.config import SPLIT_RATIOS, PreprocessConfig, TrainConfig, save_json, to_dict
from ccrcc_grade.core.errors import CcrccError
from ccrcc_grade.core.fileio import atomic_write_json, atomic_write_text
from ccrcc_grade.core.paths import RunDir, WorkDir
from ccrcc_grade.core.phases import check_phase
from ccrcc_grade.federated.server import FederationState, make_strategy, run_server
from ccrcc_grade.federated.sites import check_sites, merge_sites, site_name, split_by_centre

FEDERATION = "federation.json"


@dataclasses.dataclass
class FederatedOptions:
    """`federated`: rounds x local epochs = the epochs of a `train` run (the comparison's budget)."""

    rounds: int = 10
    local_epochs: int = 1
    strategy: str = "fedavg"
    mu: float = 0.01  # FedProx's proximal weight
    ratios: str = SPLIT_RATIOS
    address: str = "127.0.0.1:0"  # 0: a free port of this machine
    compare: bool = True  # --simulate: also centralised and each site alone
    client_timeout: float = 3600.0  # seconds a site may take for its whole federation
    site_patience: float = 30.0  # seconds a site waits for a silent server (x 3 tries) before it stops


def _free_address(address: str) -> str:
    host, _, port = address.rpartition(":")
    if port != "0":
        return address
    import socket

    with socket.socket() as s:
        s.bind((host or "127.0.0.1", 0))
        return f"{host or '127.0.0.1'}:{s.getsockname()[1]}"


def _check_out(out: Path, resume: bool) -> None:
    if resume:
        if not RunDir(out).last.is_file():
            if RunDir(out).is_finished():
                raise CcrccError(f"{out}: this federation has finished; nothing to resume")
            raise CcrccError(f"{out}: no last.pt of an unfinished federation to resume")
        return
    if out.exists() and any(out.iterdir()):
        raise CcrccError(f"{out}: output folder exists and is not empty (give a new folder, or --resume {out})")


def prepare_sites(
    inputs: list[Path], out: Path, simulate: bool, opts: FederatedOptions, cfg: TrainConfig, size: int
) -> dict[str, Path]:
    """The site WORK folders: cut from one cohort by centre (--simulate) or given."""
    if simulate:
        if len(inputs) != 1:
            raise CcrccError(f"--simulate takes one cohort (its center column makes the sites), got {len(inputs)}")
        src = inputs[0]
        work = src
        if not WorkDir(src).is_ingested():
            from ccrcc_grade.ingest.pipeline import ingest

            work = out / "work"
            if not work.is_dir():
                ingest(src, work, PreprocessConfig(size=size), show_progress=cfg.progress)
        sites_dir = out / "sites"
        if sites_dir.is_dir():  # --resume: the sites cut before
            return {site_name(w): w for w in sorted(sites_dir.glob("*/work"))}
        return split_by_centre(work, sites_dir, opts.ratios, cfg.seed)
    works = {}
    for w in inputs:
        if not WorkDir(w).is_ingested():
            raise CcrccError(
                f"{w}: not an ingested WORK folder (each site runs `ccrcc-grade ingest` and `split` first)"
            )
        if not WorkDir(w).splits.is_file():
            raise CcrccError(f"{w}: no splits.json; run `ccrcc-grade split {w}` at the site first")
        name = site_name(w)
        if name in works:
            name = f"{name}-{len(works) + 1}"
        works[name] = Path(w)
    return works


def _spawn_clients(
    sites: dict[str, Path], cfg: TrainConfig, address: str, out: Path, patience: float
) -> dict[str, subprocess.Popen]:
    procs = {}
    # the sites share this machine's cores: each its share, or their thread pools fight (measured:
    # 3 sites with a full pool each on 2 cores trained 10-40x slower than one alone)
    threads = cfg.num_threads or max(1, (os.cpu_count() or 1) // len(sites))
    for name, work in sites.items():
        folder = out / "sites" / name.replace("/", "_")
        folder.mkdir(parents=True, exist_ok=True)
        cfg_path = folder / "client.json"
        save_json(dataclasses.replace(cfg, work=str(Path(work).resolve()), out="", num_threads=threads), cfg_path)
        log = open(folder / "client.log", "a", encoding="utf-8")  # noqa: SIM115 - closed with the process
        procs[name] = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "ccrcc_grade.federated.client",
                str(cfg_path),
                address,
                name,
                "--max-wait",
                str(patience),
            ],
            stdout=log,
            stderr=subprocess.STDOUT,
            env={**os.environ, "PYTHONUNBUFFERED": "1", "OMP_NUM_THREADS": str(threads)},
        )
        procs[name].log = log  # type: ignore[attr-defined]
    return procs


def _reap(procs: dict[str, subprocess.Popen], timeout: float) -> dict[str, int]:
    codes = {}
    deadline = time.monotonic() + timeout
    for name, p in procs.items():
        try:
            codes[name] = p.wait(max(1.0, deadline - time.monotonic()))
        except subprocess.TimeoutExpired:
            p.kill()
            codes[name] = p.wait()
        p.log.close()  # type: ignore[attr-defined]
    return codes


def federated(
    inputs: list[Path | str],
    out: Path | str,
    cfg: TrainConfig,
    opts: FederatedOptions | None = None,
    simulate: bool = False,
    resume: bool = False,
    size: int = PreprocessConfig.size,
    n_boot: int = 2000,
) -> dict:
    """Train one model across sites (see the module's docstring); returns federation.json."""
    opts = opts or FederatedOptions()
    out = Path(out)
    inputs = [Path(i) for i in inputs]
    for i in inputs:
        if not i.exists():
            raise CcrccError(f"{i}: not found")
    if opts.rounds < 1 or opts.local_epochs < 1:
        raise CcrccError(f"--rounds and --local-epochs must be >= 1, got {opts.rounds} and {opts.local_epochs}")
    if opts.strategy not in ("fedavg", "fedprox"):
        raise CcrccError(f"--strategy must be fedavg or fedprox, got {opts.strategy!r}")
    if not 0 <= opts.mu <= 10 or opts.mu != opts.mu:
        raise CcrccError(f"--mu must be between 0 and 10, got {opts.mu}")
    if not 0 < opts.site_patience <= 3600:
        raise CcrccError(f"--site-patience must be between 0 and 3600 seconds, got {opts.site_patience}")
    cfg = dataclasses.replace(cfg, phase=check_phase(cfg.phase), epochs=opts.rounds * opts.local_epochs)
    cfg.validate()
    _check_out(out, resume)
    out.mkdir(parents=True, exist_ok=True)
    sites = prepare_sites(inputs, out, simulate, opts, cfg, size)
    summary = check_sites(sites, cfg.phase)
    pooled = merge_sites(sites, out / "pooled") if not (out / "pooled").is_dir() else out / "pooled"
    run_cfg = dataclasses.replace(cfg, work=str(pooled.resolve()), out=str(out.resolve()))
    state_resume = None
    if resume:
        from ccrcc_grade.model.inference import read_checkpoint

        state_resume = read_checkpoint(RunDir(out).last)
        if not state_resume.get("federated_resume"):
            raise CcrccError(f"{RunDir(out).last}: not the resume state of a federation")
    done = int(state_resume["round"]) if state_resume else 0
    if done >= opts.rounds:
        raise CcrccError(f"{out}: {done} rounds done already (--rounds {opts.rounds})")
    counts = ", ".join(f"{k}: {v['patients']} patients" for k, v in summary.items())
    print(
        f"federation of {len(sites)} sites ({counts}); "
        f"{opts.strategy}, rounds {done + 1}-{opts.rounds} x {opts.local_epochs} local epoch(s), phase {cfg.phase}",
        flush=True,
    )
    save_json(run_cfg, RunDir(out).config)
    history = _serve(sites, run_cfg, opts, out, state_resume, local=True)
    return _finish(out, sites, summary, run_cfg, opts, history, simulate, n_boot)


def _meta(cfg: TrainConfig) -> dict:
    from ccrcc_grade.ingest.cache import CropCache
    from ccrcc_grade.model.registry import uses_imagenet_norm
    from ccrcc_grade.model.train import run_meta

    if not cfg.work:
        return {
            "model": cfg.model,
            "classes": ["low", "high"],
            "config": to_dict(cfg),
            "phase": cfg.phase,
            "splits": {"train": [], "val": [], "test": []},
            "cohort": {},
            "reference": None,
        }
    splits = json.loads(WorkDir(cfg.work).splits.read_text())
    return run_meta(cfg, CropCache.load(cfg.work), splits, uses_imagenet_norm(cfg.weights))


def _serve(
    sites: dict[str, Path] | int,
    cfg: TrainConfig,
    opts: FederatedOptions,
    out: Path,
    resume: dict | None,
    local: bool,
    certificates: tuple[Path, Path, Path] | None = None,
) -> FederationState:
    n_sites = len(sites) if isinstance(sites, dict) else int(sites)
    state = FederationState(out, cfg.model, _meta(cfg), resume)
    done = state.offset
    initial = state.initial_arrays(resume, cfg.seed, cfg.model, cfg.weights)

    def fit_config(rnd: int) -> dict:
        return {"server_round": done + rnd, "local_epochs": opts.local_epochs, "mu": opts.mu}

    strategy = make_strategy(opts.strategy, n_sites, state, initial, fit_config, opts.mu)
    address = _free_address(opts.address)
    procs = _spawn_clients(sites, cfg, address, out, opts.site_patience) if local else {}
    try:
        run_server(address, opts.rounds - done, strategy, certificates)
    except CcrccError:
        _reap(procs, 60)
        raise
    except Exception as exc:  # noqa: BLE001 - Flower's server loop; the last complete round stays in last.pt
        _reap(procs, 60)
        raise CcrccError(
            f"the federation stopped in round {len(state.history) + 1} ({exc.__class__.__name__}: {exc}); "
            f"the last complete round is in {RunDir(out).last} (--resume continues)"
        ) from None
    codes = _reap(procs, opts.client_timeout)
    bad = {k: c for k, c in codes.items() if c != 0}
    if bad:
        raise CcrccError(
            f"site(s) {', '.join(bad)} stopped with an error (see {out}/sites/<site>/client.log); "
            f"the last complete round is in {RunDir(out).last}"
        )
    return state


def _finish(
    out: Path,
    sites: dict[str, Path],
    summary: dict,
    cfg: TrainConfig,
    opts: FederatedOptions,
    state: FederationState,
    simulate: bool,
    n_boot: int,
) -> dict:
    from ccrcc_grade.model.evaluate import evaluate_run

    if not RunDir(out).best.is_file():
        raise CcrccError(f"{out}: no round produced a model (no site reported a validation score)")
    atomic_write_json(
        RunDir(out).summary,
        {
            "run": str(out),
            "model": cfg.model,
            "phase": cfg.phase,
            "best_epoch": state.best_round,
            "best_val": next((h for h in state.history if h["round"] == state.best_round), {}),
            "epochs": opts.rounds * opts.local_epochs,
            "federated": True,
        },
    )
    RunDir(out).last.unlink(missing_ok=True)  # finished: the resume state is no longer needed
    metrics = evaluate_run(out, "test", n_boot=n_boot, seed=cfg.seed, device=cfg.device)
    fed = {
        "sites": summary,
        "strategy": opts.strategy,
        "mu": opts.mu if opts.strategy == "fedprox" else None,
        "rounds": opts.rounds,
        "local_epochs": opts.local_epochs,
        "best_round": state.best_round,
        "history": state.history,
        "exchanged": {
            "to_sites": "the global model's tensors (state dict, fixed key order) and the round's settings",
            "from_sites": "the local model's tensors and these numbers: " + ", ".join(sorted(state.received_keys)),
            "never": "pixel data, crops, patient ids, file names",
        },
        "test": {"patients": metrics["patient"]["n_patients"], "auc": metrics["patient"]["high"]["auc"]},
    }
    if simulate and opts.compare:
        from ccrcc_grade.federated.compare import compare_models

        fed["comparison"] = compare_models(out, sites, cfg, n_boot)
    atomic_write_json(out / FEDERATION, fed)
    return fed


def serve_only(
    address: str,
    n_sites: int,
    out: Path,
    cfg: TrainConfig,
    opts: FederatedOptions,
    certificates: tuple[Path, Path, Path] | None,
    resume: bool = False,
) -> dict:
    """The coordinating centre's half across machines: the server alone, waiting for n sites."""
    _check_out(out, resume)
    out.mkdir(parents=True, exist_ok=True)
    cfg = dataclasses.replace(cfg, work="", out=str(out.resolve()), epochs=opts.rounds * opts.local_epochs)
    save_json(cfg, RunDir(out).config)
    from ccrcc_grade.model.inference import read_checkpoint

    state_resume = read_checkpoint(RunDir(out).last) if resume else None
    opts = dataclasses.replace(opts, address=address)
    state = _serve(n_sites, cfg, opts, out, state_resume, local=False, certificates=certificates)
    if not RunDir(out).best.is_file():
        raise CcrccError(f"{out}: no round produced a model")
    RunDir(out).last.unlink(missing_ok=True)
    fed = {
        "sites": n_sites,
        "strategy": opts.strategy,
        "rounds": opts.rounds,
        "best_round": state.best_round,
        "history": state.history,
    }
    atomic_write_json(out / FEDERATION, fed)
    atomic_write_text(
        out / "README.txt",
        f"federated model; evaluate it at each site: ccrcc-grade evaluate {out} --cohort SITE_WORK\n",
    )
    return fed


def join(work: Path, address: str, cfg: TrainConfig, root_certificates: Path | None = None) -> int:
    """A hospital's half across machines: its WORK folder joins the server at ``address``."""
    from ccrcc_grade.federated.client import run_client

    if not WorkDir(work).splits.is_file():
        raise CcrccError(f"{work}: no splits.json; run `ccrcc-grade split {work}` first")
    return run_client(
        dataclasses.replace(cfg, work=str(Path(work).resolve())), address, site_name(work), root_certificates
    )
