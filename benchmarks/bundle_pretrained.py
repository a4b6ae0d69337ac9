"""Ship a trained optimizer inside the package: copy a run's best checkpoint to
``src/l2o/pretrained/ours/NAME.safetensors`` with its card extended by the evaluation results
(ours and Adam's, per task) and what it is known to fail at.

    python benchmarks/bundle_pretrained.py --name dm-cl-il \
        --checkpoint runs/dm-cl-il-cpu/best.safetensors \
        --eval mlp-orig=runs/eval/dm-cl-il-cpu-mlp-orig --adam mlp-orig=runs/eval/adam-mlp-orig \
        --known-failures "..."

Every number in the card is read from the evaluation folders named on the command line.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from l2o.checkpoint import load_rule_checkpoint, save_rule
from l2o.training import RECIPES, TrainConfig

OUT_DIR = Path(__file__).resolve().parents[1] / "src" / "l2o" / "pretrained" / "ours"


def _pairs(items: list[str]) -> dict[str, Path]:
    out = {}
    for item in items:
        task, sep, path = item.partition("=")
        if not sep:
            raise SystemExit(f"expected TASK=DIR, got {item!r}")
        out[task] = Path(path)
    return out


def _result(folder: Path) -> dict:
    s = json.loads((folder / "summary.json").read_text())
    f = s["final_ln_loss"]
    return {
        "final_ln_loss": f["mean"],
        "final_ln_loss_min": f["min"],
        "final_ln_loss_max": f["max"],
        "steps": s["steps"],
        "seeds": len(s["seeds"]),
        "diverged_seeds": len(s["diverged_seeds"]),
        "lr": s.get("hyperparameters", {}).get("lr"),
        "source": str(folder),
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--name", required=True)
    ap.add_argument("--checkpoint", required=True, type=Path)
    ap.add_argument("--eval", action="append", default=[], help="TASK=evaluation folder")
    ap.add_argument("--adam", action="append", default=[], help="TASK=Adam evaluation folder")
    ap.add_argument("--known-failures", default="")
    ap.add_argument(
        "--selection",
        default="",
        help="how this run was chosen, e.g. 'best of training seeds 0-2 on mlp-orig 10x10k'",
    )
    args = ap.parse_args()

    rule = load_rule_checkpoint(args.checkpoint)
    card = dict(rule.card)
    for key in ("format", "model", "hyperparameters"):
        card.pop(key, None)
    evaluation = {}
    adams = _pairs(args.adam)
    for task, folder in _pairs(args.eval).items():
        entry = _result(folder)
        if task in adams:
            adam = _result(adams[task])
            entry["adam"] = {k: adam[k] for k in ("final_ln_loss", "lr", "steps", "seeds")}
        evaluation[task] = entry
    # what the training departs from in the paper's procedure, by the recipes as they are now
    if card.get("recipe") in RECIPES and isinstance(card.get("config"), dict):
        config = TrainConfig.from_dict(card["config"])
        card["deviations"] = RECIPES[card["recipe"]].deviations(config)
    card.update(
        name=args.name,
        trained_on=f"{card.get('task', 'mlp-orig')} (MNIST train split), recipe "
        f"{card.get('recipe')} at the {card.get('budget')} budget",
        evaluation=evaluation,
        known_failures=args.known_failures,
        source_checkpoint=str(args.checkpoint),
        training_seed=card.get("config", {}).get("seed"),
        selection=args.selection,
    )
    OUT_DIR.mkdir(parents=True, exist_ok=True)
    path = OUT_DIR / f"{args.name}.safetensors"
    save_rule(path, rule, card)
    path.with_suffix(".json").unlink()  # the card lives inside the checkpoint
    print(f"wrote {path} ({path.stat().st_size} bytes)")
    print(json.dumps(evaluation, indent=2))


if __name__ == "__main__":
    main()
