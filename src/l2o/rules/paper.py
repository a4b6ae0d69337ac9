"""The authors' trained L2O-DM and RNNprop weights (Chen et al. 2020), as ready-to-use rules.

Chen, Zhang, Zhou, Chang, Liu, Amini, Wang, "Training Stronger Baselines for Learning to
Optimize" (NeurIPS 2020) published the networks behind their figures in
``VITA-Group/L2O-Training-Techniques`` (MIT licence). They are shipped here converted, unchanged in
value, to NumPy ``.npz`` files whose keys are the sonnet variable names (``lstm_1/w_gates``, ...),
and loaded into :class:`~l2o.rules.dm.DMRule` / :class:`~l2o.rules.rnnprop.RNNpropRule`, whose
semantics they assume (docs/method.md 1.1, 1.2). Keep :data:`PAPER_ATTRIBUTION` wherever they go.

``load_paper_rule("paper:dm-cl-il")`` returns the paper's strongest L2O-DM.
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np

from l2o.rules.dm import DMRule
from l2o.rules.registry import learned_rule_class
from l2o.rules.rnnprop import RNNpropRule

#: Name -> (model kind, file name). The names are the paper's curves (Figures 2, 3 and 5).
PAPER_CHECKPOINTS: dict[str, tuple[str, str]] = {
    "paper:dm": ("dm", "dm.npz"),
    "paper:dm-aug": ("dm", "dm-aug.npz"),
    "paper:dm-il": ("dm", "dm-il.npz"),
    "paper:dm-cl": ("dm", "dm-cl.npz"),
    "paper:dm-cl-il": ("dm", "dm-cl-il.npz"),
    "paper:rnnprop": ("rnnprop", "rnnprop.npz"),
    "paper:rnnprop-cl-il": ("rnnprop", "rnnprop-cl-il.npz"),
}

PAPER_ATTRIBUTION = """\
The paper:* learned-optimizer weights are the trained L2O-DM and RNNprop models of
Tianlong Chen, Weiyi Zhang, Jingyang Zhou, Shiyu Chang, Sijia Liu, Lisa Amini, Zhangyang Wang,
"Training Stronger Baselines for Learning to Optimize", NeurIPS 2020 (arXiv:2010.09089),
published in https://github.com/VITA-Group/L2O-Training-Techniques
("L2O-DM & RNNProp/trained_models"), converted unchanged in value to NumPy .npz files.

MIT License

Copyright (c) 2020 the authors of VITA-Group/L2O-Training-Techniques
(the repository's LICENSE file holds the authoritative notice)

Permission is hereby granted, free of charge, to any person obtaining a copy
of this software and associated documentation files (the "Software"), to deal
in the Software without restriction, including without limitation the rights
to use, copy, modify, merge, publish, distribute, sublicense, and/or sell
copies of the Software, and to permit persons to whom the Software is
furnished to do so, subject to the following conditions:

The above copyright notice and this permission notice shall be included in all
copies or substantial portions of the Software.

THE SOFTWARE IS PROVIDED "AS IS", WITHOUT WARRANTY OF ANY KIND, EXPRESS OR
IMPLIED, INCLUDING BUT NOT LIMITED TO THE WARRANTIES OF MERCHANTABILITY,
FITNESS FOR A PARTICULAR PURPOSE AND NONINFRINGEMENT. IN NO EVENT SHALL THE
AUTHORS OR COPYRIGHT HOLDERS BE LIABLE FOR ANY CLAIM, DAMAGES OR OTHER
LIABILITY, WHETHER IN AN ACTION OF CONTRACT, TORT OR OTHERWISE, ARISING FROM,
OUT OF OR IN CONNECTION WITH THE SOFTWARE OR THE USE OR OTHER DEALINGS IN THE
SOFTWARE.
"""

#: Environment variable that points at a folder holding the ``.npz`` files.
CHECKPOINTS_ENV = "L2O_PAPER_CHECKPOINTS"

_SHARED_RELATIVE = Path("shared") / "data" / "paper-checkpoints"


def _packaged_dir() -> Path:
    return Path(__file__).resolve().parents[1] / "pretrained" / "paper"


def _shared_dir() -> Path:
    """``../shared/data/paper-checkpoints`` next to the repository holding this file."""
    here = Path(__file__).resolve()
    for parent in here.parents:
        if (parent / _SHARED_RELATIVE).is_dir():
            return parent / _SHARED_RELATIVE
    # src/l2o/rules/paper.py -> the repository root is parents[3]; its sibling "shared".
    return here.parents[min(4, len(here.parents) - 1)] / _SHARED_RELATIVE


def paper_checkpoint_dir() -> Path:
    """Where the ``.npz`` files are looked up: ``$L2O_PAPER_CHECKPOINTS`` if set, else the
    package's ``pretrained/paper`` folder if it exists, else ``../shared/data/paper-checkpoints``
    beside the repository (a development checkout)."""
    env = os.environ.get(CHECKPOINTS_ENV)
    if env:
        return Path(env).expanduser()
    packaged = _packaged_dir()
    if packaged.is_dir():
        return packaged
    return _shared_dir()


def _canonical(name: str) -> str:
    key = name if name.startswith("paper:") else f"paper:{name}"
    if key not in PAPER_CHECKPOINTS:
        raise ValueError(
            f"unknown paper checkpoint {name!r}; choose one of: {', '.join(PAPER_CHECKPOINTS)}"
        )
    return key


def load_paper_rule(name: str) -> DMRule | RNNpropRule:
    """The authors' trained rule ``name`` (e.g. ``"paper:dm-cl-il"``; the ``paper:`` prefix is
    optional), with the weights copied exactly, as float32, in evaluation mode.

    Raises:
        ValueError: for an unknown name, or a file whose keys or shapes do not fit the model.
        FileNotFoundError: if the file is not in :func:`paper_checkpoint_dir`.
    """
    key = _canonical(name)
    model, file_name = PAPER_CHECKPOINTS[key]
    rule = learned_rule_class(model)()
    path = paper_checkpoint_dir() / file_name
    expected = ", ".join(f"{k} {'x'.join(map(str, s))}" for k, s in rule.npz_state_shapes().items())
    if not path.is_file():
        raise FileNotFoundError(
            f"paper checkpoint {key!r} needs {path}, which does not exist. It should be an .npz "
            f"with the {model} weights ({expected}). Fix: set {CHECKPOINTS_ENV} to the folder "
            f"holding {', '.join(sorted({f for _, f in PAPER_CHECKPOINTS.values()}))} "
            "(converted from VITA-Group/L2O-Training-Techniques), or install a package that "
            "ships them in l2o/pretrained/paper."
        )
    try:
        with np.load(path, allow_pickle=False) as data:
            arrays = {k: data[k] for k in data.files}
    except Exception as err:  # OSError, ValueError, EOFError, BadZipFile, zlib.error, ...
        raise ValueError(
            f"cannot read paper checkpoint {path} as an .npz file ({type(err).__name__}: {err}). "
            f"Fix: replace it with the original {file_name} (it may be truncated or corrupt) or "
            f"point {CHECKPOINTS_ENV} at a folder that has it."
        ) from err
    try:
        rule.load_npz_state(arrays)
    except ValueError as err:
        raise ValueError(
            f"paper checkpoint {path} does not hold {model} weights: {err} Fix: replace the file "
            f"with the original {file_name} or point {CHECKPOINTS_ENV} at a folder that has it."
        ) from err
    rule.weights_source = key
    return rule.eval()
