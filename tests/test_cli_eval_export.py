"""`teasr eval` / `teasr export` user errors: exit code 2 and a single `teasr: error: ...` line."""

from __future__ import annotations

from pathlib import Path

import pytest

from pipeline_teasr.cli import EXIT_BAD_INPUT, main

from .conftest import random_photo


@pytest.fixture()
def folders(tmp_path: Path) -> dict[str, str]:
    for name in ("hr", "lr", "other", "empty", "small"):
        (tmp_path / name).mkdir()
    random_photo(32, 32, seed=1).save(tmp_path / "hr" / "a.png")
    random_photo(32, 32, seed=2).save(tmp_path / "hr" / "b.png")
    random_photo(8, 8, seed=1).save(tmp_path / "lr" / "a.png")
    random_photo(8, 8, seed=2).save(tmp_path / "lr" / "b.png")
    random_photo(8, 8, seed=3).save(tmp_path / "other" / "a.png")
    random_photo(8, 8, seed=4).save(tmp_path / "other" / "c.png")
    random_photo(8, 8, seed=5).save(tmp_path / "small" / "a.png")
    random_photo(8, 8, seed=6).save(tmp_path / "small" / "b.png")
    (tmp_path / "empty" / "readme.txt").write_text("no images here")
    (tmp_path / "report.json").write_text('{"format": "something else"}')
    return {name: str(tmp_path / name) for name in ("hr", "lr", "other", "empty", "small", "report.json")} | {
        "tmp": str(tmp_path)
    }


CASES = {
    "no LR source": (["eval", "--gt", "{hr}"], "pass --lr DIR"),
    "empty GT folder": (
        ["eval", "--gt", "{empty}", "--lr", "{lr}", "--no-model", "--baseline", "bicubic"],
        "no image",
    ),
    "missing GT folder": (["eval", "--gt", "{tmp}/nope", "--pred", "{hr}", "--scale", "4"], "not found"),
    "mismatched folders": (
        ["eval", "--gt", "{hr}", "--lr", "{other}", "--no-model", "--baseline", "bicubic"],
        "mismatched folders",
    ),
    "pred without scale": (["eval", "--gt", "{hr}", "--pred", "{hr}"], "--scale"),
    "pred size mismatch": (["eval", "--gt", "{hr}", "--pred", "{small}", "--scale", "4", "--learned"], "GT is 32x32"),
    "steps with no-model": (["eval", "--gt", "{hr}", "--lr", "{lr}", "--steps", "1", "--no-model"], "contradict"),
    "bad model folder": (
        ["eval", "--gt", "{hr}", "--lr", "{lr}", "--model", "{empty}", "--steps", "1"],
        "model_index",
    ),
    "too small for the crop": (
        ["eval", "--gt", "{small}", "--pred", "{small}", "--scale", "4", "--learned"],
        "a: crop_border=4 leaves nothing",
    ),
    "save-images onto a file": (
        [*"eval --gt {hr} --lr {lr} --no-model --baseline bicubic --save-images".split(), "{tmp}/report.json"],
        "is a file; --save-images takes a folder",
    ),
    "json under a file": (
        [*"eval --gt {hr} --lr {lr} --no-model --baseline bicubic --json".split(), "{tmp}/report.json/r.json"],
        "report.json is a file, not a folder",
    ),
    "markdown onto a folder": (
        ["eval", "--gt", "{hr}", "--lr", "{lr}", "--no-model", "--baseline", "bicubic", "--markdown", "{tmp}"],
        "is a folder; --markdown takes a file name",
    ),
    "LR of the wrong size": (
        ["eval", "--gt", "{hr}", "--lr", "{lr}", "--scale", "2", "--no-model", "--baseline", "bicubic"],
        "a: GT is 32x32 but the LR is 8x8, which is 16x16 at x2",
    ),
    "export existing target": (["export", "{hr}", "--model", "{tmp}"], "already exists"),
    "export fuse without lora": (["export", "{tmp}/out", "--model", "{tmp}", "--fuse"], "--fuse needs --lora"),
    "export missing lora": (["export", "{tmp}/out", "--model", "{tmp}", "--lora", "{tmp}/nope"], "LoRA not found"),
    "export not a pipeline": (["export", "{tmp}/out", "--model", "{empty}"], "model_index.json is missing"),
    "export missing model folder": (["export", "{tmp}/out", "--model", "{tmp}/nope"], "model folder not found"),
}


@pytest.mark.parametrize("case", list(CASES))
def test_eval_and_export_errors_exit_2_with_one_line(case, folders, capsys):
    argv, message = CASES[case]
    code = main([arg.format(**folders) for arg in argv])
    err = capsys.readouterr().err
    lines = [line for line in err.splitlines() if line.strip()]
    assert code == EXIT_BAD_INPUT, err
    assert len(lines) == 1 and lines[0].startswith("teasr: error: "), err
    assert message in lines[0]


def test_export_with_a_bad_card_json_leaves_nothing(folders, tiny_pipeline_dir, capsys):
    out = Path(folders["tmp"]) / "exported"
    code = main(["export", str(out), "--model", tiny_pipeline_dir, "--card-json", folders["report.json"]])
    err = capsys.readouterr().err.strip()
    assert code == EXIT_BAD_INPUT and "not a TEASR evaluation report" in err and "\n" not in err
    assert not out.exists() and not [p for p in Path(folders["tmp"]).iterdir() if p.name.startswith(".exported")]


def test_eval_help_lists_the_modes(capsys):
    with pytest.raises(SystemExit) as info:
        main(["eval", "--help"])
    assert info.value.code == 0
    text = capsys.readouterr().out
    for option in ("--lr", "--gt", "--pred", "--degradation", "--steps", "--baseline", "--json", "--markdown"):
        assert option in text


def test_eval_output_checks_create_nothing_and_accept_writable_special_files(folders, capsys):
    tmp = Path(folders["tmp"])
    argv = ["eval", "--gt", f"{tmp}/missing", "--pred", folders["hr"], "--scale", "4"]
    code = main([*argv, "--save-images", f"{tmp}/out/images", "--json", f"{tmp}/out2/r.json"])
    assert code == EXIT_BAD_INPUT and "GT folder not found" in capsys.readouterr().err
    assert not (tmp / "out").exists() and not (tmp / "out2").exists()  # a refused command leaves no folders
    argv = ["eval", "--gt", folders["hr"], "--pred", folders["hr"], "--scale", "4", "--quiet"]
    assert main([*argv, "--markdown", "/dev/null"]) == 0  # a stream or device, not a file in a folder
