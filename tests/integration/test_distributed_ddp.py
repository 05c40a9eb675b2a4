"""Data-parallel training (DDP) on 2 CPU processes with the gloo backend.

* The global kelp Dice (``KelpDiceMetric``: summed tp/fp/fn/tn states) over prediction/target
  tensors split unevenly across 2 processes equals the single-process value.
* The weighted sampler under Lightning's ``DistributedSamplerWrapper``: the ranks draw disjoint
  shares of one epoch list of ``samples_per_epoch`` indices.
* A tiny model trained by ``kelpseg.train.run.train`` with ``strategy=ddp, devices=2`` logs the
  same val/dice as a single-process validation of its checkpoint, with a validation set of odd
  size (so no rank may see a tile twice), and each rank trains on half of ``samples_per_epoch``.
"""

from __future__ import annotations

import csv
import json
import os
import socket
import subprocess
import sys
import textwrap
from collections import Counter
from pathlib import Path
from typing import Any

import pandas as pd
import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp

from kelpseg.evaluate.metrics import scores_from_counts
from kelpseg.layout import DataLayout
from kelpseg.train.config import TrainConfig

pytestmark = pytest.mark.slow

N_TRAIN, N_TEST = 24, 4


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _fixed_tensors() -> tuple[torch.Tensor, torch.Tensor]:
    gen = torch.Generator().manual_seed(0)
    probs = torch.rand(7, 1, 20, 20, generator=gen)
    target = (torch.rand(7, 20, 20, generator=gen) < 0.3).to(torch.uint8)
    return probs, target


def _dice_worker(rank: int, world: int, port: int, out: str) -> None:
    from kelpseg.train.metrics import KelpDiceMetric

    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    dist.init_process_group("gloo", rank=rank, world_size=world)
    try:
        probs, target = _fixed_tensors()
        share = [slice(0, 4), slice(4, 7)][rank]  # uneven: 4 tiles and 3 tiles
        metric = KelpDiceMetric(threshold=0.5)
        for i in range(share.start, share.stop):  # one update per "batch"
            metric.update(probs[i : i + 1], target[i : i + 1])
        scores = {k: float(v) for k, v in metric.compute().items()}
        counts = [int(metric.tp), int(metric.fp), int(metric.fn), int(metric.tn)]  # this rank's own
        Path(out, f"rank{rank}.json").write_text(json.dumps({"scores": scores, "counts": counts}))
    finally:
        dist.destroy_process_group()


def test_global_dice_over_two_processes_equals_single_process(tmp_path: Path) -> None:
    from kelpseg.train.metrics import KelpDiceMetric

    mp.spawn(_dice_worker, args=(2, _free_port(), str(tmp_path)), nprocs=2, join=True)
    probs, target = _fixed_tensors()
    single = KelpDiceMetric(threshold=0.5)
    single.update(probs, target)
    expected = {k: float(v) for k, v in single.compute().items()}

    pred = probs[:, 0] >= 0.5
    true = target > 0
    tp = int((pred & true).sum())
    fp, fn = int((pred & ~true).sum()), int((~pred & true).sum())
    tn = pred.numel() - tp - fp - fn
    assert expected["dice"] == pytest.approx(2 * tp / (2 * tp + fp + fn))
    results = [json.loads((tmp_path / f"rank{rank}.json").read_text()) for rank in (0, 1)]
    local = [sum(c) for c in zip(results[0]["counts"], results[1]["counts"], strict=True)]
    assert local == [tp, fp, fn, tn]  # every pixel counted by exactly one rank
    for result in results:  # compute() summed the ranks' counts once
        assert result["scores"] == pytest.approx(expected)
        assert result["scores"] == pytest.approx(scores_from_counts(tp, fp, fn, tn))


def test_weighted_sampler_ranks_draw_disjoint_shares_of_one_epoch_list() -> None:
    from lightning.fabric.utilities.distributed import DistributedSamplerWrapper

    from kelpseg.train.sampler import make_sampler

    weights = torch.linspace(0.05, 1.0, 30).numpy()
    n = 64

    def sampler() -> Any:
        return make_sampler(weights, n, generator=torch.Generator().manual_seed(42))

    full = list(sampler())
    shares = []
    for rank in (0, 1):  # what each DDP process builds: same seed, its own rank
        wrapped = DistributedSamplerWrapper(sampler(), num_replicas=2, rank=rank, shuffle=True, seed=7)
        wrapped.set_epoch(0)
        shares.append(list(wrapped))
    assert [len(s) for s in shares] == [n // 2, n // 2]
    assert Counter(shares[0]) + Counter(shares[1]) == Counter(full)  # disjoint positions, whole list

    # Positions, not only the multiset: rank r takes every other element of one shuffled order.
    order = torch.randperm(n, generator=torch.Generator().manual_seed(7)).tolist()
    assert shares[0] == [full[i] for i in order[0::2]] and shares[1] == [full[i] for i in order[1::2]]


DDP_SCRIPT = textwrap.dedent(
    """
    import json, sys
    from pathlib import Path
    import lightning.pytorch as pl
    from kelpseg.distributed.runner import call_with_callbacks
    from kelpseg.train.config import TrainConfig
    from kelpseg.train.run import train

    class RecordTiles(pl.Callback):
        def __init__(self):
            self.tiles = []
        def on_train_batch_start(self, trainer, module, batch, batch_idx):
            self.tiles += list(batch["tile_id"])
        def on_train_epoch_end(self, trainer, module):
            out = Path(sys.argv[2]) / f"tiles-rank{trainer.global_rank}.json"
            out.write_text(json.dumps({"world": trainer.world_size, "tiles": self.tiles}))

    config = TrainConfig.from_yaml(sys.argv[1])
    call_with_callbacks(train, config, progress=False, callbacks=[RecordTiles()])
    """
)


@pytest.fixture(scope="module")
def layout(tmp_path_factory: pytest.TempPathFactory) -> DataLayout:
    from kelpseg.prep.aoi import group_aois
    from kelpseg.prep.band_stats import compute_band_stats
    from kelpseg.prep.eda import run_eda
    from kelpseg.prep.split import make_cv_split
    from kelpseg.synthetic import generate_dataset

    root = tmp_path_factory.mktemp("ddp") / "data"
    generate_dataset(root, N_TRAIN, N_TEST, seed=11, workers=2, progress=False)
    layout = DataLayout(root)
    group_aois(layout, workers=2, progress=False)
    run_eda(layout, workers=2, progress=False)
    compute_band_stats(layout, indices=["DEMWM", "NDVI"], workers=2, progress=False)
    make_cv_split(layout, n_splits=3)
    return layout


def _odd_split(layout: DataLayout, out: Path) -> tuple[Path, int]:
    """The CV split with fold 0's validation set cut to an odd number of tiles (>= 3)."""
    table = pd.read_parquet(layout.split_path("cross_val"))
    val = table.index[table["split_0"] == "val"]
    keep = len(val) if len(val) % 2 else len(val) - 1
    table.loc[val[keep:], "split_0"] = "train"
    table.to_parquet(out)
    assert keep >= 3
    return out, keep


def test_lightning_ddp_on_two_cpu_processes_matches_single_process_validation(
    layout: DataLayout, tmp_path: Path
) -> None:
    import lightning.pytorch as pl

    from kelpseg.train.datamodule import KelpDataModule
    from kelpseg.train.run import load_module

    split, n_val = _odd_split(layout, tmp_path / "split.parquet")
    samples = 8
    config = TrainConfig(
        data_dir=str(layout.root),
        split_path=str(split),
        output_dir=str(tmp_path / "runs"),
        run_name="ddp",
        encoder="resnet18",
        decoder_channels=[16, 16, 8, 8, 4],  # full depth: every encoder weight is used (plain ddp)
        spectral_indices=["DEMWM", "NDVI"],
        train_crop_size=64,
        batch_size=2,
        samples_per_epoch=samples,
        num_workers=0,
        epochs=1,
        preview_n_tiles=0,
        accelerator="cpu",
        devices=2,
        strategy="ddp",
        mlflow=False,
    )
    config_path = config.save(tmp_path / "config.yaml")
    script = tmp_path / "ddp_train.py"
    script.write_text(DDP_SCRIPT)
    env = {**os.environ, "PYTHONHASHSEED": "0", "OMP_NUM_THREADS": "1"}
    proc = subprocess.run(
        [sys.executable, str(script), str(config_path), str(tmp_path)],
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]

    # Each rank trained on its own half of the epoch's weighted draw.
    ranks = [json.loads((tmp_path / f"tiles-rank{r}.json").read_text()) for r in (0, 1)]
    assert [r["world"] for r in ranks] == [2, 2]
    assert [len(r["tiles"]) for r in ranks] == [samples // 2, samples // 2]
    datamodule = KelpDataModule(config.model_copy(update={"devices": 1, "strategy": "auto"}))
    drawn = [datamodule.train_frame["tile_id"].iloc[i] for i in datamodule.train_dataloader().sampler]
    assert Counter(ranks[0]["tiles"]) + Counter(ranks[1]["tiles"]) == Counter(drawn)

    run_dir = tmp_path / "runs" / "ddp"
    with open(run_dir / "metrics.csv", newline="") as fh:
        (row,) = list(csv.DictReader(fh))
    module = load_module(run_dir / "checkpoints" / "last.ckpt")
    trainer = pl.Trainer(accelerator="cpu", devices=1, logger=False, enable_progress_bar=False)
    single_dm = KelpDataModule(module.config.model_copy(update={"devices": 1, "strategy": "auto"}))
    assert len(single_dm.val_frame) == n_val
    (single,) = trainer.validate(module, datamodule=single_dm, verbose=False)
    assert float(row["val/dice"]) == pytest.approx(single["val/dice"], abs=2e-6)
    assert float(row["val/precision"]) == pytest.approx(single["val/precision"], abs=2e-6)
    assert float(row["val/recall"]) == pytest.approx(single["val/recall"], abs=2e-6)
