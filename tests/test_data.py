"""CIFAR-10 import: verification errors, exact round trip, stable dev split, reproducible loaders."""

from __future__ import annotations

import json
import pickle
import warnings
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import synthetic_batches, write_archive

from deqrobust import config, data
from deqrobust.cli import main


def prepared(make_config, archive, **sections):
    cfg = config.load(make_config(archive, **sections))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", data.DataWarning)
        data.prepare(cfg)
    return cfg


def test_round_trip_gives_the_exact_pixels_and_labels(cifar_archive, make_config):
    archive, written = cifar_archive()
    cfg = prepared(make_config, archive, data={"dev_size": 10})
    split = json.loads((Path(cfg["data"]["root"]) / data.SPLIT_FILE).read_text())
    train = np.concatenate([written[f"data_batch_{i}"][b"data"] for i in range(1, 6)])
    labels = np.concatenate([written[f"data_batch_{i}"][b"labels"] for i in range(1, 6)])
    keep = np.setdiff1d(np.arange(100), split["dev_indices"])
    x, y = data.load_split(cfg, "train")
    assert x.dtype == torch.float32 and y.dtype == torch.int64 and x.shape == (90, 3, 32, 32)
    assert torch.equal((x * 255).round().to(torch.uint8), torch.from_numpy(train[keep].reshape(-1, 3, 32, 32)))
    assert y.tolist() == labels[keep].tolist()
    xd, yd = data.load_split(cfg, "dev")
    assert torch.equal(
        (xd * 255).round().to(torch.uint8), torch.from_numpy(train[split["dev_indices"]].reshape(-1, 3, 32, 32))
    )
    xt, yt = data.load_split(cfg, "test")
    assert torch.equal(
        (xt * 255).round().to(torch.uint8), torch.from_numpy(written["test_batch"][b"data"].reshape(-1, 3, 32, 32))
    )
    assert yt.tolist() == written["test_batch"][b"labels"]
    assert split["official"] is False and split["archive_md5"] == data.md5_of(archive)


def test_wrong_md5_needs_the_key(cifar_archive, make_config):
    archive, _ = cifar_archive()
    cfg = config.load(make_config(archive, data={"allow_md5_mismatch": False}))
    with pytest.raises(data.DataError) as err:
        data.prepare(cfg)
    message = str(err.value)
    assert str(archive) in message and data.OFFICIAL_MD5 in message and data.md5_of(archive) in message
    assert "data.allow_md5_mismatch" in message
    # the forms each tool accepts (Snakemake refuses a dotted --config key before the workflow starts)
    assert f"--config 'data={{archive: {archive}, allow_md5_mismatch: true}}'" in message
    assert "--set data.allow_md5_mismatch=true" in message
    assert not (archive.parent.parent / "data" / data.FOLDER).exists()
    cfg["data"]["allow_md5_mismatch"] = True
    with pytest.warns(data.DataWarning, match="data.allow_md5_mismatch"):
        data.prepare(cfg)


def test_missing_archive_and_offline_download_say_what_to_do(tmp_path, make_config):
    cfg = config.load(make_config(tmp_path / "nowhere.tar.gz"))
    with pytest.raises(data.DataError, match="does not exist"):
        data.prepare(cfg)
    cfg = config.load(make_config(None, data={"url": f"file://{tmp_path}/absent.tar.gz"}))
    with pytest.raises(data.DataError, match=r"data.archive.*--archive"):
        data.prepare(cfg)


def test_download_is_verified_and_kept_once(cifar_archive, make_config, tmp_path):
    archive, written = cifar_archive()
    url = archive.resolve().as_uri()
    cfg = config.load(make_config(None, data={"url": url, "allow_md5_mismatch": False}))
    with pytest.raises(data.DataError, match="it was deleted"):
        data.prepare(cfg)
    assert not (tmp_path / "data" / data.DOWNLOAD_NAME).exists()
    cfg["data"]["allow_md5_mismatch"] = True
    with pytest.warns(data.DataWarning):
        data.prepare(cfg)
    assert data.md5_of(tmp_path / "data" / data.DOWNLOAD_NAME) == data.md5_of(archive)
    assert data.load_split(cfg, "test")[1].tolist() == written["test_batch"][b"labels"]


def _drop(name):
    return lambda batches: batches.pop(name)


def _reshape(batches):
    batches["data_batch_2"][b"data"] = batches["data_batch_2"][b"data"].reshape(-1, 1024 * 3 // 2, 2)


def _bad_labels(batches):
    batches["test_batch"][b"labels"][3] = 10


def _short_labels(batches):
    batches["data_batch_4"][b"labels"].pop()


@pytest.mark.parametrize(
    "edit, message",
    [
        (_drop("data_batch_3"), "lacks member.*cifar-10-batches-py/data_batch_3"),
        (_drop("batches.meta"), "lacks member.*batches.meta"),
        (_reshape, r"data_batch_2: data has shape \(20, 1536, 2\)"),
        (_bad_labels, r"test_batch: labels outside 0..9 \(found \[10\]\)"),
        (_short_labels, "data_batch_4: 20 images but 19 labels"),
    ],
)
def test_broken_archives_each_have_their_message(cifar_archive, make_config, edit, message):
    archive, _ = cifar_archive(edit=edit)
    with pytest.raises(data.DataError, match=message) as err:
        prepared(make_config, archive)
    assert str(archive) in str(err.value)


def test_truncated_and_foreign_members(cifar_archive, make_config, tmp_path):
    archive, _ = cifar_archive()
    truncated = tmp_path / "truncated.tar.gz"
    truncated.write_bytes(archive.read_bytes()[: archive.stat().st_size // 2])
    with pytest.raises(data.DataError, match="truncated"):
        prepared(make_config, truncated)

    class Payload:
        def __reduce__(self):
            return (print, ("pwned",))

    hostile = write_archive(
        tmp_path / "hostile.tar.gz", synthetic_batches(), raw={"test_batch": pickle.dumps(Payload())}
    )
    with pytest.raises(data.DataError, match="forbidden object builtins.print"):
        prepared(make_config, hostile)


def test_dev_split_is_stable_and_disjoint(cifar_archive, make_config, tmp_path):
    archive, written = cifar_archive()
    cfg = prepared(make_config, archive, data={"dev_size": 15, "split_seed": 3})
    first = (tmp_path / "data" / data.SPLIT_FILE).read_text()
    assert main(["data", "-c", str(make_config(archive, data={"dev_size": 15, "split_seed": 3}))]) == 0
    assert (tmp_path / "data" / data.SPLIT_FILE).read_text() == first
    record = json.loads(first)
    assert len(record["dev_indices"]) == 15 and record["train_size"] == 85
    _, ydev = data.load_split(cfg, "dev")
    xtr, _ = data.load_split(cfg, "train")
    xdev, _ = data.load_split(cfg, "dev")
    flat_tr = {bytes((t * 255).round().to(torch.uint8).numpy()) for t in xtr}
    assert not any(bytes((t * 255).round().to(torch.uint8).numpy()) in flat_tr for t in xdev)
    assert len(ydev) == 15


def test_subsets_are_seeded_and_exclude_dev(cifar_archive, make_config):
    archive, _ = cifar_archive()
    cfg = prepared(
        make_config, archive, data={"train_subset": 30, "test_subset": 7}, training={"batch_size": 10}
    )  # a training batch must fit the training split
    x1, y1 = data.load_split(cfg, "train")
    x2, y2 = data.load_split(cfg, "train")
    assert len(y1) == 30 and torch.equal(x1, x2) and torch.equal(y1, y2)
    assert len(data.load_split(cfg, "test")[1]) == 7
    names, rows = data._indices(cfg, "train")
    _, dev = data._indices(cfg, "dev")
    assert not set(rows.tolist()) & set(dev.tolist())


def test_existing_dataset_is_reused(cifar_archive, make_config, tmp_path, monkeypatch):
    archive, _ = cifar_archive()
    cfg = prepared(make_config, archive)
    marker = tmp_path / "data" / data.FOLDER / data.MARKER
    stamp = marker.stat().st_mtime_ns
    monkeypatch.setattr(data, "read_archive", lambda *a: pytest.fail("archive read twice"))
    data.prepare(cfg)
    assert marker.stat().st_mtime_ns == stamp
    other, _ = cifar_archive(seed=1, name="other.tar.gz")
    with pytest.raises(data.DataError, match="already holds a verified dataset"):
        data.prepare(cfg, archive=str(other))


def test_loaders_are_in_range_and_resume_exactly(cifar_archive, make_config):
    archive, _ = cifar_archive()
    cfg = prepared(make_config, archive)
    full = list(data.train_loader(cfg, batch_size=16, seed=5, epoch=2))
    assert len(full) == 90 // 16
    for x, y in full:
        assert x.shape == (16, 3, 32, 32) and x.min() >= 0 and x.max() <= 1 and y.dtype == torch.int64
    resumed = list(data.train_loader(cfg, batch_size=16, seed=5, epoch=2, start_batch=3))
    assert all(torch.equal(a[0], b[0]) and torch.equal(a[1], b[1]) for a, b in zip(full[3:], resumed))
    assert len(resumed) == len(full) - 3
    other = next(iter(data.train_loader(cfg, batch_size=16, seed=5, epoch=3)))
    assert not torch.equal(other[0], full[0][0])
    xt, yt = data.load_split(cfg, "test")
    chunks = list(data.batches(xt, yt, 8))
    assert [len(c[1]) for c in chunks] == [8, 8, 4] and torch.equal(torch.cat([c[0] for c in chunks]), xt)


def test_augmentation_is_crop_and_flip():
    x = torch.arange(2 * 3 * 32 * 32, dtype=torch.float32).reshape(2, 3, 32, 32)
    same = data.augment(x, torch.tensor([[4, 4], [4, 4]]), torch.tensor([False, True]))
    assert torch.equal(same[0], x[0]) and torch.equal(same[1], x[1].flip(2))
    shifted = data.augment(x, torch.tensor([[0, 8], [8, 0]]), torch.tensor([False, False]))
    assert torch.equal(shifted[0, :, 4:, :28], x[0, :, :28, 4:]) and shifted[0, :, :4].eq(0).all()
    assert torch.equal(shifted[1, :, :28, 4:], x[1, :, 4:, :28]) and shifted[1, :, :, :4].eq(0).all()
