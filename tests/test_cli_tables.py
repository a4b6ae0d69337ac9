"""The tables of the `l2o` command at 80 columns: in a terminal (a real pseudo-terminal), in a
pipe (one row per line) and as JSON (issue 16 item 1), and the pretrained figures (item 2)."""

import json
import os
import pty
import subprocess
import sys
from pathlib import Path

import pytest
from typer.testing import CliRunner

from l2o.cli import app
from l2o.console import Col, render_table
from l2o.measured import PAPER_WEIGHTS_MEASURED
from l2o.training import RECIPES

runner = CliRunner()
ENV80 = {"COLUMNS": "80"}


def in_terminal(*args, columns=80):
    """stdout and stderr of ``l2o ARGS`` run in a pseudo-terminal ``columns`` wide."""
    master, slave = pty.openpty()
    env = dict(os.environ, COLUMNS=str(columns), LINES="50", TERM="dumb")
    proc = subprocess.Popen(
        [sys.executable, "-m", "l2o.cli", *args], stdout=slave, stderr=slave, env=env
    )
    os.close(slave)
    chunks = []
    while True:
        try:
            chunk = os.read(master, 65536)
        except OSError:
            break
        if not chunk:
            break
        chunks.append(chunk)
    os.close(master)
    assert proc.wait() == 0
    return b"".join(chunks).decode().replace("\r\n", "\n")


def in_pipe(*args):
    done = subprocess.run(
        [sys.executable, "-m", "l2o.cli", *args],
        capture_output=True,
        text=True,
        env=dict(os.environ, COLUMNS="80"),
    )
    assert done.returncode == 0, done.stderr
    return done.stdout


def assert_fits(text, columns=80):
    for line in text.splitlines():
        assert len(line) <= columns, line
    assert "…" not in text


@pytest.mark.parametrize(
    "args",
    [["train", "--list"], ["pretrained"], ["tasks"], ["--help"], ["evaluate", "--help"]]
    + [[c, "--help"] for c in ("train", "reproduce", "compare", "pretrained", "demo")],
)
def test_a_terminal_80_columns_wide_shows_everything_uncut(args):
    text = in_terminal(*args)
    assert_fits(text)
    if args == ["train", "--list"]:
        for name in RECIPES:
            assert f"\n{name} " in text
        assert "150/300/10000" in text  # rnnprop-cl-il's epochs, whole
        assert "RNNprop with curriculum" in text
    if args == ["pretrained"]:
        assert "paper:rnnprop-cl-il" in text and "-10.69" in text


def test_help_gives_one_line_per_command():
    text = in_terminal("--help")
    for command in ("tasks", "evaluate", "compare", "train", "reproduce", "pretrained", "demo"):
        line = next(x for x in text.splitlines() if x.strip("│ ").startswith(command + " "))
        assert line.rstrip(" │").endswith(".")  # the one-line help ends on this line


def test_a_pipe_gets_one_row_per_line_so_grep_finds_it():
    out = in_pipe("train", "--list")
    rows = [x for x in out.splitlines() if x.startswith("rnnprop-cl-il ")]
    assert len(rows) == 1
    assert "150/300/10000" in rows[0] and "imitation of Adam in 30% of the epochs" in rows[0]
    assert len(out.splitlines()) == len(RECIPES) + 2  # header, rule, one line per recipe


def test_cli_runner_at_80_columns_is_the_plain_form():
    result = runner.invoke(app, ["train", "--list"], env=ENV80)
    assert result.exit_code == 0
    for name, recipe in RECIPES.items():
        assert any(
            x.startswith(name + " ") and recipe.description in x for x in result.output.splitlines()
        )
    result = runner.invoke(app, ["tasks"], env=ENV80)
    assert "mlp-orig" in result.output and "15,910" in result.output and "…" not in result.output


def test_json_gives_the_same_data():
    recipes = json.loads(runner.invoke(app, ["train", "--list", "--json"]).stdout)
    assert [r["recipe"] for r in recipes] == list(RECIPES)
    by_name = {r["recipe"]: r for r in recipes}
    assert by_name["rnnprop-cl-il"]["epochs"] == {"demo": 150, "cpu": 300, "paper": 10000}
    assert "curriculum cut at horizon 1,000" in by_name["rnnprop-cl-il"]["deviations"]
    tasks = json.loads(runner.invoke(app, ["tasks", "--json"]).stdout)
    assert {t["task"]: t["parameters"] for t in tasks}["conv-mnist"] == 18218
    assert "batch_size" in tasks[0]["options"] and "stride" not in tasks[3]["options"]


def test_pretrained_shows_what_each_paper_file_reaches_here_beside_the_paper():
    data = json.loads(runner.invoke(app, ["pretrained", "--json"]).stdout)
    rows = {r["name"]: r for r in data["rows"]}
    assert len(PAPER_WEIGHTS_MEASURED) == 7 and set(PAPER_WEIGHTS_MEASURED) <= set(rows)
    dm = rows["paper:dm-cl-il"]
    assert (dm["here"], dm["paper"], dm["seeds"], dm["steps"]) == (-5.90, -10.8, 10, 10000)
    rnnprop = rows["paper:rnnprop"]
    assert (rnnprop["here"], rnnprop["paper"]) == (-10.69, -5.5)
    from l2o.bundled import bundled_cards

    card = bundled_cards()["rnnprop-cl-il"]["evaluation"]["mlp-orig"]
    assert rows["rnnprop-cl-il"]["here"] == pytest.approx(card["final_ln_loss"])  # from the card
    assert any("docs/results.md" in note for note in data["notes"])
    out = runner.invoke(app, ["pretrained"], env=ENV80).stdout
    line = next(x for x in out.splitlines() if x.startswith("paper:dm-cl-il "))
    assert "-5.90" in line and "-10.80" in line and "10x10k" in line and "[-6.58, -5.36]" in line


def test_evaluate_summary_and_compare_tables(tmp_path):
    runs = []
    for rule in ("adam", "sgd"):
        out = tmp_path / rule
        args = ["evaluate", rule, "--task", "quadratic", "--steps", "30", "--seeds", "2"]
        result = runner.invoke(app, [*args, "--out", str(out), "--json"])
        assert result.exit_code == 0, result.output
        summary = json.loads(result.stdout)
        assert summary == json.loads((out / "summary.json").read_text())
        runs.append(str(out))
    result = runner.invoke(app, ["compare", *runs, "--out", str(tmp_path / "c")], env=ENV80)
    assert result.exit_code == 0, result.output
    rows = [x for x in result.stdout.splitlines() if x.startswith(("adam ", "sgd "))]
    assert len(rows) == 2 and all("quadratic" in r and "]" in r for r in rows)
    data = json.loads(
        runner.invoke(app, ["compare", *runs, "--out", str(tmp_path / "c2"), "--json"]).stdout
    )
    assert [r["optimizer"] for r in data] == ["adam", "sgd"]


def test_reproduce_plan_as_rows_and_json(tmp_path):
    args = ["reproduce", "fig5", "--budget", "demo", "--plan", "--out", str(tmp_path / "r")]
    result = runner.invoke(app, args, env=ENV80)
    assert result.exit_code == 0, result.output
    data = json.loads(runner.invoke(app, [*args, "--json"]).stdout)
    assert data["jobs"] and all(j["state"] == "to run" for j in data["jobs"])
    for job in data["jobs"]:
        assert any(x.startswith(job["job"] + " ") for x in result.stdout.splitlines())


def test_render_table_moves_long_columns_to_a_second_line_and_never_cuts():
    rows = [{"name": "a-very-long-name-indeed", "n": 123456789, "text": "word " * 40}]
    cols = [Col("name", "name"), Col("n", "n", right=True), Col("text", "text", long=True)]
    lines = render_table(rows, cols, terminal=True, max_width=40)
    assert all(len(x) <= 40 for x in lines)
    assert "a-very-long-name-indeed" in lines[2] and "123456789" in lines[2]
    assert lines[3].startswith("    text: word")
    plain = render_table(rows, cols, terminal=False, max_width=40)
    assert len(plain) == 3 and plain[2].endswith("word")


def test_measured_values_are_the_ones_in_results_md():
    """``l2o pretrained`` shows l2o/measured.py's copy of docs/results.md's grid of the authors'
    checkpoints: a re-measurement must update both, and this test says which cell differs."""
    import re

    text = (Path(__file__).resolve().parents[1] / "docs" / "results.md").read_text()
    header = "| checkpoint | mlp-orig | mlp-relu | mlp-deeper | conv-mnist | conv-cifar |"
    lines = text[text.index(header) :].splitlines()
    tasks = [c.strip() for c in header.strip("|").split("|")][1:]
    cell = re.compile(r"(-?\d+\.\d+) \[(-?\d+\.\d+), (-?\d+\.\d+)\] \((\d+)x(\d+)k\)")
    seen = 0
    for line in lines[2:]:
        if not line.startswith("| `paper:"):
            break
        cells = [c.strip() for c in line.strip("|").split("|")]
        name = cells[0].strip("`")
        for task, text_cell in zip(tasks, cells[1:], strict=True):
            match = cell.match(text_cell)
            measured = PAPER_WEIGHTS_MEASURED[name].get(task)
            if match is None:
                assert measured is None, f"{name} {task}: results.md says {text_cell!r}"
                continue
            mean, low, high, seeds, ksteps = match.groups()
            expected = (float(mean), float(low), float(high), int(seeds), int(ksteps) * 1000)
            assert measured is not None and tuple(measured) == expected, f"{name} {task}"
            seen += 1
    assert seen >= 25
