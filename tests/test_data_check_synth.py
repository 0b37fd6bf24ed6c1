from __future__ import annotations

import json

from handreid.data.cli import main as data_main
from handreid.data.synth import generate


def test_check_uses_the_split_a_generated_dataset_declares(tmp_path, capsys):
    root = generate(tmp_path / "synth", ids=8, per_id=3, size=(32, 24), seed=0)
    assert data_main(["check", "--root", str(root)]) == 0
    out = capsys.readouterr().out
    assert "split: random" in out and "synth.json" in out


def test_an_explicit_split_overrides_the_declared_one(tmp_path, capsys):
    root = generate(tmp_path / "synth", ids=8, per_id=3, size=(32, 24), seed=0)
    assert data_main(["check", "--root", str(root), "--split", "standard", "--no-decode"]) == 2
    assert "standard split" in capsys.readouterr().err
    rc = data_main(["check", "--root", str(root), "--split", "random", "--no-decode", "--json"])
    assert rc == 0
    assert set(json.loads(capsys.readouterr().out)) == {"dorsal_r"}  # stdout stays pure JSON
