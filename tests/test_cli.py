from __future__ import annotations

import json
import subprocess
import sys


from dogclf.cli import main


def test_labels_find_any_spelling(capsys):
    assert main(["labels", "find", "german shepherd dog", "AFFENPINSCHER"]) == 0
    lines = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    assert [(d["index"], d["folder"]) for d in lines] == [(70, "071.German_shepherd_dog"), (0, "001.Affenpinscher")]


def test_labels_show_json_round_trips(capsys):
    from dogclf.labels import BreedLabels, get_labels

    assert main(["labels", "show", "--json"]) == 0
    assert BreedLabels.from_json(capsys.readouterr().out) == get_labels("dogimages-133")


def test_errors_are_one_line_with_exit_1(capsys):
    assert main(["labels", "find", "not a breed"]) == 1
    err = capsys.readouterr().err
    assert err.startswith("dogclf: error: unknown breed 'not a breed'") and err.count("\n") == 1


def test_usage_errors_exit_2(capsys):
    assert main(["labels", "frobnicate"]) == 2
    assert "invalid choice: 'frobnicate'" in capsys.readouterr().err


def test_console_script_entry_runs():
    out = subprocess.run([sys.executable, "-m", "dogclf.cli", "backends"], capture_output=True, text=True, check=True)
    assert {"local", "sagemaker"} <= set(out.stdout.split())
