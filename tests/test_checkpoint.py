"""The checkpoint module: a folder is replaced as a whole, even when the process is killed while saving it."""

import json
import os
import re
import signal
import subprocess
import sys
import time

import pytest

from tests.conftest import REPO_ROOT
from training import checkpoint
from training.checkpoint import replace_folder, write_json_atomically

SAVE_FOREVER = """
import sys
from training.checkpoint import load_checkpoint, write_hub_folder
model, tokenizer = load_checkpoint(sys.argv[1])
generation = 0
while True:
    generation += 1
    model.config.save_generation = generation  # in config.json; the marker file below must agree with it
    write_hub_folder(model, tokenizer, sys.argv[2],
                     finish=lambda staging: (staging / "generation.txt").write_text(str(generation)))
    print(generation, flush=True)
"""


INDEX_AND_SAVE_FOREVER = """
import sys, torch
from training.checkpoint import load_checkpoint
model, tokenizer = load_checkpoint(sys.argv[1])
added = 0
while True:
    added += 1
    tokenizer.add_items([f"music/new-{added}"], embeddings=torch.randn(1, 384))
    tokenizer.save_pretrained(sys.argv[2])  # the usual way, into the same folder each time
    model.save_pretrained(sys.argv[2])
    print(added, flush=True)
"""


def saving_forever(script: str, checkpoint, target) -> subprocess.Popen:
    """``script`` run on ``checkpoint`` and ``target`` in another process, once its first save is whole."""
    process = subprocess.Popen(
        [sys.executable, "-c", script, str(checkpoint), str(target)], cwd=REPO_ROOT, stdout=subprocess.PIPE, text=True
    )
    assert process.stdout.readline().strip() == "1"  # one whole save exists before the looks start
    return process


def test_a_kill_during_add_items_and_the_usual_saves_leaves_a_folder_that_loads_and_recommends(tiny_run, tmp_path):
    from transformers import pipeline

    target = tmp_path / "mine"
    process = saving_forever(INDEX_AND_SAVE_FOREVER, tiny_run["checkpoint"], target)
    indexed = []
    try:
        for look in range(20):  # freezes land at different points of add_items and of both saves
            time.sleep(0.02 + 0.037 * look)
            process.send_signal(signal.SIGSTOP)  # what a kill -9 now would leave on disk
            recommend = pipeline("next-item-generation", model=str(target), trust_remote_code=True)
            assert len(recommend({"history": ["music/1", "music/2"]}, top_k=5)) == 5
            indexed.append(len(recommend.tokenizer.item_codes))
            process.send_signal(signal.SIGCONT)
    finally:
        process.kill()
        process.wait()
    assert indexed == sorted(indexed) and indexed[-1] > indexed[0] > 48  # saves went on between the looks


def folder_generation(folder) -> int:
    """The generation a saved folder holds, checked to be one whole save."""
    names = {path.name for path in folder.iterdir()}
    assert {
        "model.safetensors",
        "config.json",
        "tokenizer_config.json",
        "items.safetensors",
        "generation.txt",
    } <= names
    marker = int((folder / "generation.txt").read_text())
    assert json.loads((folder / "config.json").read_text())["save_generation"] == marker, "files of two saves"
    return marker


def test_a_kill_during_the_final_save_leaves_the_old_folder_or_the_new_one(tiny_run, tmp_path):
    target = tmp_path / "hub"
    process = saving_forever(SAVE_FOREVER, tiny_run["checkpoint"], target)
    seen = []
    for delay in (0.03, 0.05, 0.08, 0.13, 0.21, 0.34, 0.55) * 3:  # 21 kills at different points of a save
        time.sleep(delay)
        process.send_signal(signal.SIGSTOP)  # freeze it mid-save, wherever it is, and look
        seen.append(folder_generation(target))
        process.send_signal(signal.SIGCONT)
    process.kill()
    process.wait()
    final = folder_generation(target)
    assert seen == sorted(seen) and final >= seen[-1] > 1  # saves went on, and each look found one whole save
    assert not any(
        path.name.startswith(".hub.") and path.name not in {".hub.staging", ".hub.lock"} for path in tmp_path.iterdir()
    )


def test_a_second_writer_of_one_folder_is_refused_by_name(tiny_run, tmp_path):
    target = tmp_path / "hub"
    model, tokenizer = checkpoint.load_checkpoint(tiny_run["checkpoint"])
    with checkpoint.writing_lock(target):  # another writer holds it (a lock is per open file, so this process too)
        with pytest.raises(ValueError, match=f"{re.escape(str(target))}: another process is writing this folder"):
            checkpoint.write_hub_folder(model, tokenizer, target)
    assert not target.exists()
    checkpoint.write_hub_folder(model, tokenizer, target)  # once it is released, writing goes on
    assert (target / "items.safetensors").is_file()


@pytest.mark.parametrize("exchange", [True, False], ids=["atomic swap", "two renames"])
def test_replacing_a_folder_keeps_nothing_of_the_old_one(tmp_path, monkeypatch, exchange):
    if not exchange:
        monkeypatch.setattr(checkpoint, "_exchange", lambda first, second: False)
    target, staging = tmp_path / "out", tmp_path / ".out.staging"
    for generation, names in enumerate((["a", "b"], ["b", "c"])):
        staging.mkdir()
        for name in names:
            write_json_atomically(staging / name, generation)
        replace_folder(staging, target)
        assert sorted(path.name for path in target.iterdir()) == names and not staging.exists()
    assert sorted(path.name for path in tmp_path.iterdir()) == ["out"]


def test_a_replacement_cut_between_its_two_renames_is_repaired_by_the_next(tmp_path, monkeypatch):
    monkeypatch.setattr(checkpoint, "_exchange", lambda first, second: False)
    target, staging = tmp_path / "out", tmp_path / ".out.staging"
    for folder, name in ((target, "old"), (staging, "new")):
        folder.mkdir()
        (folder / name).write_text(name)
    renames = []

    def cut_after_first(source, destination):
        if renames:
            raise KeyboardInterrupt  # the process dies between the two renames
        renames.append(source)
        os.rename(source, destination)

    monkeypatch.setattr(checkpoint.os, "replace", cut_after_first)
    with pytest.raises(KeyboardInterrupt):
        replace_folder(staging, target)
    monkeypatch.undo()
    assert not target.exists() and (tmp_path / ".out.old" / "old").is_file()  # both complete folders are kept
    retry = tmp_path / ".out.retry"
    retry.mkdir()
    (retry / "newer").write_text("newer")
    replace_folder(retry, target)  # puts the old folder back first, then replaces it
    assert sorted(path.name for path in tmp_path.iterdir() if not path.name.startswith(".out.staging")) == ["out"]
    assert [path.name for path in target.iterdir()] == ["newer"]
