"""All GPU checks in one short script: correctness on ``cuda`` against the CPU, speed of
meta-training and evaluation, and the full evaluation grid (paper checkpoints, our checkpoints and
Adam on the five tasks, 10 seeds x 10,000 steps) run as parallel worker processes on one GPU.

Usage (on the GPU machine, from the repository root)::

    python benchmarks/gpu_check.py --out $OUT [--steps 10000] [--seeds 10] [--workers 8]
        [--grid-deadline 300] [--checkpoints runs/dm-cpu/best.safetensors ...]
        [--skip correctness speed grid fused]

    python benchmarks/gpu_check.py --out /tmp/gpu-dry --dry-run   # anywhere: CPU, small

The ``fused`` part measures the fused LSTM cell (``l2o.rules.fused_lstm``) against the reference
cell: L2O-DM meta-training and evaluation steps/s at 1, 16 and 64 instances, and its 20-step
meta-gradient on the device against the reference cell on the CPU.

Writes ``gpu_check.json`` (correctness and speed) and ``eval_grid.json`` (one summary plus binned
curves per evaluation), updated as results arrive so that a timeout loses nothing finished.

The GPU machine cannot reach ``../shared``: point ``L2O_DATA_DIR`` at a copy of MNIST and pass
``--cifar-test-zip`` with a zip of the CIFAR-10 *test* images only (the whole JPEG copy does not fit
the transfer limit; evaluation trajectories only read the test split).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
import traceback
from concurrent.futures import ProcessPoolExecutor, as_completed
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
T0 = time.perf_counter()


def log(msg: str) -> None:
    print(f"[{time.perf_counter() - T0:7.1f}s] {msg}", flush=True)


def install_cifar_test_shim(zip_path: str | None) -> None:
    """Serve CIFAR-10 from a test-only zip (train split empty) in this process."""
    if not zip_path:
        return
    import io
    import zipfile

    from PIL import Image

    import l2o.data as data
    import l2o.tasks.datasets as datasets

    cache: dict = {}

    def load(name, root=None, *, download=True):
        if name != "cifar10":
            return data.load_dataset(name, root, download=download)
        if "ds" not in cache:
            zf = zipfile.ZipFile(zip_path)
            names = sorted(
                (n for n in zf.namelist() if n.endswith(".jpg")),
                key=lambda n: (data.CIFAR10_CLASSES.index(n.split("/")[1]), n),
            )
            images = np.stack(
                [np.asarray(Image.open(io.BytesIO(zf.read(n))).convert("RGB")) for n in names]
            )
            labels = np.array(
                [data.CIFAR10_CLASSES.index(n.split("/")[1]) for n in names], np.int64
            )
            empty = np.zeros((0, 32, 32, 3), np.uint8)
            cache["ds"] = data.Dataset(
                "cifar10",
                empty,
                np.zeros(0, np.int64),
                images,
                labels,
                "CIFAR-10 (JPEG copy), test split only",
            )
        return cache["ds"]

    datasets.load_dataset = load


def binned(losses: np.ndarray, points: int = 200) -> dict:
    steps = losses.shape[1]
    width = max(1, steps // points)
    usable = (steps // width) * width
    b = losses[:, :usable].reshape(losses.shape[0], -1, width).mean(2)
    return {"width": width, "per_seed": np.round(b, 9).tolist()}


def grid_job(spec: str, task: str, steps: int, seeds: int, lr, zip_path, device: str) -> dict:
    install_cifar_test_shim(zip_path)
    from l2o import evaluate, get_task, load_rule

    torch.set_num_threads(1)
    rule = load_rule(spec, lr=lr)
    result = evaluate(rule, get_task(task), steps, list(range(seeds)), device=device)
    summary = result.summary()
    summary["label"] = spec if lr is None else f"{spec} (lr {lr:g})"
    summary["curve"] = binned(result.losses)
    return summary


def correctness(zip_path: str | None, device: str = "cuda", scale_steps: int = 300) -> dict:
    from l2o import LearnedOptimizer, evaluate, get_task, load_rule
    from l2o.rules import ScaleRule
    from l2o.training import Trainer, get_recipe

    out = {}

    def compare(name, fn):
        try:
            a, b = fn("cpu"), fn(device)
            out[name] = {"cpu": a, device: b}
            log(f"correctness {name}: cpu {a} cuda {b}")
        except Exception as err:
            out[name] = {"error": f"{type(err).__name__}: {err}", "trace": traceback.format_exc()}
            log(f"correctness {name} FAILED: {err}")

    def ev(spec, task, steps, seeds=2):
        def run(device):
            r = evaluate(load_rule(spec), get_task(task), steps, list(range(seeds)), device=device)
            return {
                "first_losses": np.round(r.losses[:, :5], 6).tolist(),
                "final_ln_loss": r.summary()["final_ln_loss"]["per_seed"],
            }

        return run

    compare(
        f"paper:dm-cl-il mlp-orig {scale_steps} steps",
        ev("paper:dm-cl-il", "mlp-orig", scale_steps),
    )
    compare(
        f"paper:rnnprop-cl-il mlp-deeper {scale_steps} steps",
        ev("paper:rnnprop-cl-il", "mlp-deeper", scale_steps),
    )
    compare(f"adam conv-mnist {scale_steps // 3} steps", ev("adam", "conv-mnist", scale_steps // 3))

    def scale_run(device):
        r = evaluate(ScaleRule(), get_task("mlp-orig"), 100, [0, 1], device=device)
        return {
            "first_losses": np.round(r.losses[:, :5], 6).tolist(),
            "final_ln_loss": r.summary()["final_ln_loss"]["per_seed"],
        }

    torch.manual_seed(0)
    compare("scale (untrained, seeded) mlp-orig 100 steps", scale_run)

    def train_epoch(device):
        import tempfile

        cfg = get_recipe("dm").config("demo", device=device, compile=False)
        tr = Trainer(cfg, tempfile.mkdtemp())
        recs = [tr.train_epoch() for _ in range(2)]
        return [round(r["mean_meta_loss"], 5) for r in recs]

    compare("dm meta-training, 2 epochs, mean meta-loss", train_epoch)

    def user_model(device):
        torch.manual_seed(0)
        model = torch.nn.Sequential(torch.nn.Linear(8, 16), torch.nn.Tanh(), torch.nn.Linear(16, 2))
        model = model.to(device)
        x = torch.randn(64, 8, device=device)
        y = (x[:, 0] > 0).long()
        opt = LearnedOptimizer(model.parameters(), "paper:dm-cl-il")
        losses = []
        for _ in range(50):
            opt.zero_grad()
            loss = torch.nn.functional.cross_entropy(model(x), y)
            loss.backward()
            opt.step()
            losses.append(loss.item())
        return [round(losses[0], 5), round(losses[-1], 5)]

    compare("LearnedOptimizer on a user model, loss first/last", user_model)
    return out


def speed_checks(device: str = "cuda", steps: int = 300) -> dict:
    import tempfile

    from common import median, timed
    from l2o import evaluate, get_task, load_rule
    from l2o.rules import ScaleRule
    from l2o.training import Trainer, get_recipe

    out = {}
    for model, recipe in (("dm", "dm"), ("rnnprop", "rnnprop")):
        for compiled in (False, True):
            key = f"meta_training {model} {'compiled' if compiled else 'eager'}"
            try:
                cfg = get_recipe(recipe).config("demo", device=device, compile=compiled)
                tr = Trainer(cfg, tempfile.mkdtemp())
                tr.train_epoch()
                tr.train_epoch()
                t = timed(tr.train_epoch, 3)
                out[key] = {"epoch_seconds": t, "steps_per_second": cfg.horizon / median(t)}
            except Exception as err:
                out[key] = {"error": f"{type(err).__name__}: {err}"}
            log(f"speed {key}: {out[key]}")
    task = get_task("mlp-orig")
    for spec in ("adam", "paper:dm-cl-il", "paper:rnnprop-cl-il", "scale"):
        for seeds in (10, 100):
            key = f"evaluate {spec} mlp-orig {seeds} seeds"
            try:
                rule = ScaleRule() if spec == "scale" else load_rule(spec)
                evaluate(rule, task, 20, list(range(seeds)), device=device)
                t = timed(
                    lambda r=rule, n=seeds: evaluate(r, task, steps, list(range(n)), device=device),
                    2,
                )
                out[key] = {
                    "seconds": t,
                    "steps": steps,
                    "steps_per_second": steps / median(t),
                    "seed_steps_per_second": steps * seeds / median(t),
                }
            except Exception as err:
                out[key] = {"error": f"{type(err).__name__}: {err}"}
            log(f"speed {key}: {out[key]}")
    return out


def fused_checks(device: str, instances=(1, 16, 64), eval_steps: int = 200) -> dict:
    """The fused LSTM cell (l2o.rules.fused_lstm) on ``device``: its 20-step meta-gradient against
    the reference cell on the CPU, and steps/s of L2O-DM meta-training (compiled, ``instances``
    instances per step) and of evaluation (``instances`` seeds as one population), fused against
    the reference cell, alternating."""
    import tempfile

    from common import median, timed
    from l2o import evaluate, get_task
    from l2o.rules import DMRule, fused_lstm
    from l2o.training import Trainer, get_recipe
    from l2o.training.unroll import start_trajectory, unroll

    def use(mode):
        fused_lstm.MODE = "fused" if mode == "reference" else mode
        fused_lstm.USE_FUSED = mode != "reference"

    out: dict = {}
    task = get_task("mlp-orig")
    # Both cells, grad modes and shapes compile the same ``step``: keep them all compiled.
    torch._dynamo.config.recompile_limit = 256

    def meta_grad(dev, mode):
        use(mode)
        torch.manual_seed(0)
        rule = DMRule().to(dev)
        stream = task.stream([0, 1], "train", device=dev)
        traj = start_trajectory(rule, task, task.init([0, 1], device=dev), stream)
        surrogate, losses, _ = unroll(rule, task, traj, stream, 20)
        grads = torch.autograd.grad(surrogate, list(rule.parameters()))
        return losses.cpu(), [g.cpu() for g in grads]

    try:
        ref_losses, ref_grads = meta_grad("cpu", "reference")
        got_losses, got_grads = meta_grad(device, "fused")
        out["meta_gradient_vs_cpu_reference"] = {
            "max_loss_rel_diff": float(((got_losses - ref_losses) / ref_losses).abs().max()),
            "max_grad_rel_diff": max(
                float((g - r).abs().max() / r.abs().max())
                for g, r in zip(got_grads, ref_grads, strict=True)
            ),
        }
    except Exception as err:
        out["meta_gradient_vs_cpu_reference"] = {"error": f"{type(err).__name__}: {err}"}
    log(f"fused parity: {out['meta_gradient_vs_cpu_reference']}")
    for n in instances:
        for mode in ("reference", "fused"):
            key = f"meta_training dm {mode} {n} instances"
            try:
                use(mode)
                cfg = get_recipe("dm").config("demo", device=device, compile=True, instances=n)
                tr = Trainer(cfg, tempfile.mkdtemp())
                tr.train_epoch()
                t = timed(tr.train_epoch, 2)
                out[key] = {"epoch_seconds": t, "steps_per_second": cfg.horizon / median(t)}
            except Exception as err:
                out[key] = {"error": f"{type(err).__name__}: {err}"}
            log(f"fused {key}: {out[key]}")
            key = f"evaluate dm {mode} {n} seeds"
            try:
                use(mode)
                rule = DMRule()
                seeds = list(range(n))
                evaluate(rule, task, 10, seeds, device=device, compile=True)
                t = timed(
                    lambda r=rule, s=seeds: evaluate(
                        r, task, eval_steps, s, device=device, compile=True
                    ),
                    2,
                )
                out[key] = {
                    "seconds": t,
                    "steps_per_second": eval_steps / median(t),
                    "seed_steps_per_second": eval_steps * n / median(t),
                }
            except Exception as err:
                out[key] = {"error": f"{type(err).__name__}: {err}"}
            log(f"fused {key}: {out[key]}")
    use("fused")
    return out


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--out", required=True)
    p.add_argument("--steps", type=int, default=10_000)
    p.add_argument("--seeds", type=int, default=10)
    p.add_argument("--workers", type=int, default=8)
    p.add_argument("--grid-deadline", type=float, default=300.0, help="stop starting jobs after")
    p.add_argument("--cifar-test-zip", default=None)
    p.add_argument("--checkpoints", nargs="*", default=[])
    p.add_argument(
        "--skip", nargs="*", default=[], choices=["correctness", "speed", "grid", "fused"]
    )
    p.add_argument(
        "--dry-run",
        action="store_true",
        help="only the fused checks, on the CPU, small (checks that the script runs)",
    )
    p.add_argument("--device", default="cuda")
    p.add_argument("--check-steps", type=int, default=300)
    a = p.parse_args()
    if a.dry_run:
        a.device, a.skip = "cpu", ["correctness", "speed", "grid"]
    out = Path(a.out)
    out.mkdir(parents=True, exist_ok=True)
    install_cifar_test_shim(a.cifar_test_zip)
    from common import machine

    report = {"machine": machine(), "date": time.strftime("%Y-%m-%d")}
    grid_path, report_path = out / "eval_grid.json", out / "gpu_check.json"

    def save():
        report["elapsed_seconds"] = round(time.perf_counter() - T0, 1)
        report_path.write_text(json.dumps(report, indent=2))

    tasks = ["mlp-orig", "mlp-relu", "mlp-deeper", "conv-mnist", "conv-cifar"]
    paper = [
        "paper:dm-cl-il",
        "paper:rnnprop-cl-il",
        "paper:dm",
        "paper:rnnprop",
        "paper:dm-cl",
        "paper:dm-il",
        "paper:dm-aug",
    ]
    jobs = [(spec, t, None) for spec in paper[:2] for t in tasks[:3]]
    jobs += [("adam", t, 0.01) for t in tasks]
    jobs += [(c, t, None) for c in a.checkpoints for t in tasks[:2]]
    jobs += [(spec, t, None) for spec in paper[:2] for t in tasks[3:]]
    jobs += [(spec, t, None) for spec in paper[2:] for t in tasks]
    jobs += [(c, t, None) for c in a.checkpoints for t in tasks[2:]]
    grid: list[dict] = []
    pool = None
    futures = {}
    if "grid" not in a.skip:
        import multiprocessing as mp

        pool = ProcessPoolExecutor(a.workers, mp_context=mp.get_context("spawn"))
        for job in jobs:
            futures[
                pool.submit(
                    grid_job, job[0], job[1], a.steps, a.seeds, job[2], a.cifar_test_zip, a.device
                )
            ] = job
        log(f"grid: {len(jobs)} jobs submitted to {a.workers} workers")
    if "correctness" not in a.skip:
        report["correctness"] = correctness(a.cifar_test_zip, a.device, a.check_steps)
        save()
    if "speed" not in a.skip:
        report["speed"] = speed_checks(a.device, a.check_steps)
        save()
    if "fused" not in a.skip:
        instances = (1, 2) if a.dry_run else (1, 16, 64)
        report["fused"] = fused_checks(a.device, instances, 5 if a.dry_run else 200)
        save()
    if pool is not None:
        deadline = T0 + a.grid_deadline
        pending = set(futures)
        try:
            for fut in as_completed(futures, timeout=max(1.0, deadline - time.perf_counter())):
                pending.discard(fut)
                job = futures[fut]
                try:
                    res = fut.result()
                    grid.append(res)
                    f = res["final_ln_loss"]["mean"]
                    log(f"grid {job[0]} {job[1]}: final ln {f} ({res['steps_per_second']} steps/s)")
                except Exception as err:
                    grid.append({"label": job[0], "task": job[1], "error": str(err)})
                    log(f"grid {job} FAILED: {err}")
                grid_path.write_text(json.dumps(grid))
        except TimeoutError:
            log(f"grid deadline: {len(pending)} jobs not finished")
        for fut in pending:
            fut.cancel()
        report["grid_unfinished"] = [list(futures[f][:2]) for f in pending]
        save()
        pool.shutdown(wait=False, cancel_futures=True)
    save()
    log("done")
    os._exit(0)


if __name__ == "__main__":
    main()
