"""Training data at scale: captioned lists as the release stores them, one listing per run,
seeded workers, a resumable order, unreadable images skipped and counted, two processes.

The end-to-end test trains stage 2 with the v2.1 preset scaled down (tiny random SD, 64x64
images, a total batch of 8 over two CPU processes) from a parquet of captioned images,
interrupts and resumes, and checks the counts the run keeps: condition noise on every
sample below t = 200, empty prompts at 0.2, long captions at 0.2 of the rest, and the
unreadable entries of the list skipped exactly as often as the data order reaches them.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from torch.utils.data import DataLoader

from diffbir.errors import ConfigError
from diffbir.training.data import (
    PROMPT_EMPTY,
    PROMPT_LONG,
    PairedDataset,
    WorkerSeeder,
    choose_prompt,
)
from diffbir.training.records import RecordList, read_records

pytestmark = pytest.mark.usefixtures("single_thread")
pa = pytest.importorskip("pyarrow")
pq = pytest.importorskip("pyarrow.parquet")

TOKENIZER = Path(__file__).parent / "fixtures" / "tokenizer" / "bpe_simple_vocab_16e6.txt.gz"


def _image(path: Path, size: int, seed: int) -> Path:
    rng = np.random.default_rng(seed)
    path.parent.mkdir(parents=True, exist_ok=True)
    y, x = np.mgrid[0:size, 0:size] / size
    base = np.stack([np.sin(6.3 * x * (seed + 1)), np.cos(6.3 * y * (seed + 2)), x * y], -1)
    noise = rng.normal(0, 0.05, base.shape)
    Image.fromarray(np.clip((base * 0.5 + 0.5 + noise) * 255, 0, 255).astype(np.uint8)).save(path)
    return path


def _captioned_parquet(root: Path, n_good: int = 12, size: int = 64) -> Path:
    """The release's v2.1 layout: image_path, llava_long, llava_short; relative paths, plus
    one corrupt file and one image of the wrong size (``crop: none``) in the list."""
    rows = [
        (f"img/{i:02d}.png", f"a long caption of image {i}", f"short {i}") for i in range(n_good)
    ]
    for rel, _, _ in rows:
        _image(root / rel, size, int(rel[4:6]))
    (root / "img" / "broken.png").write_bytes(b"not a png")
    _image(root / "img" / "wrong.png", size + 8, 99)
    rows.insert(5, ("img/broken.png", "long broken", "short broken"))
    rows.insert(9, ("img/wrong.png", "long wrong", "short wrong"))
    table = pa.table(
        {
            "image_path": [r[0] for r in rows],
            "llava_long": [r[1] for r in rows],
            "llava_short": [r[2] for r in rows],
        }
    )
    path = root / "train.parquet"
    pq.write_table(table, path)
    return path


# ---------------------------------------------------------------------- listing


def test_a_folder_is_listed_in_one_scandir_pass_with_sidecar_captions(tmp_path, monkeypatch):
    for rel in ("a.png", "b.jpg", "sub/c.png", "sub/deeper/d.webp"):
        _image(tmp_path / "hq" / rel, 16, len(rel))
    (tmp_path / "hq" / "a.txt").write_text("a red fox\n", encoding="utf-8")
    (tmp_path / "hq" / "sub" / "c.txt").write_text("a calm sea", encoding="utf-8")
    (tmp_path / "hq" / "notes.md").write_text("not an image")
    calls = []
    real = os.scandir
    monkeypatch.setattr(os, "scandir", lambda p: calls.append(Path(p)) or real(p))
    monkeypatch.setattr(os, "walk", lambda *a, **k: pytest.fail("os.walk walks again"))
    records = read_records(tmp_path / "hq")
    assert len(calls) == 3  # one scandir per folder, nothing else
    assert [r.path.relative_to(tmp_path / "hq").as_posix() for r in records] == [
        "a.png",
        "b.jpg",
        "sub/c.png",
        "sub/deeper/d.webp",
    ]
    assert [r.prompt for r in records] == ["a red fox", "", "a calm sea", ""]
    assert not read_records(tmp_path / "hq", sidecar_captions=False)[0].prompt


def test_the_release_parquet_layout_and_a_csv_with_long_and_short_captions(tmp_path):
    path = _captioned_parquet(tmp_path, n_good=3, size=16)
    records = read_records(path, caption_column="llava_short", long_caption_column="llava_long")
    assert len(records) == 5  # every row is listed; unreadable files are found when used
    assert records[0] == type(records[0])(
        tmp_path / "img/00.png", "short 0", "a long caption of image 0"
    )
    # the path column is found by its release name; a missing caption column is one line
    with pytest.raises(ConfigError, match="no long caption column 'long'"):
        read_records(path, caption_column="llava_short", long_caption_column="long")
    table = tmp_path / "meta.csv"
    table.write_text(
        'image_path,long,short\nimg/00.png,"long, with comma",tiny\n', encoding="utf-8"
    )
    r = read_records(table, caption_column="short", long_caption_column="long")[0]
    assert (r.prompt, r.long_prompt) == ("tiny", "long, with comma")


def test_a_listing_saves_and_loads_without_python_objects_per_image(tmp_path):
    path = _captioned_parquet(tmp_path, n_good=3, size=16)
    records = read_records(path, caption_column="llava_short", long_caption_column="llava_long")
    records.save(tmp_path / "list.npz")
    again = RecordList.load(tmp_path / "list.npz")
    assert list(again) == list(records) and again.source == str(path)
    with np.load(tmp_path / "list.npz", allow_pickle=False) as f:  # plain arrays only
        assert f["paths_offsets"].dtype == np.int64 and len(f["paths_offsets"]) == 6


# ---------------------------------------------------------------------- sampling


def test_prompt_choice_has_the_released_rates():
    rng = np.random.default_rng(0)
    kinds = [choose_prompt("s", "l", rng, 0.2, 0.2)[1] for _ in range(20_000)]
    kinds = np.array(kinds)
    empty = np.mean(kinds == PROMPT_EMPTY)
    long_of_kept = np.mean(kinds[kinds != PROMPT_EMPTY] == PROMPT_LONG)
    # binomial standard errors are ~0.003: these bounds are > 6 of them wide
    assert abs(empty - 0.2) < 0.02 and abs(long_of_kept - 0.2) < 0.02
    assert choose_prompt("s", "l", np.random.default_rng(1), 0.0, 0.0) == ("s", 1)
    assert choose_prompt("s", "l", np.random.default_rng(1), 1.0, 0.0) == ("l", 2)
    assert choose_prompt("s", "l", np.random.default_rng(1), 1.0, 1.0) == ("", 0)


class _Draws(torch.utils.data.Dataset):
    """What a worker's global generators give (a library drawing on its own)."""

    epoch = 0

    def __len__(self):
        return 8

    def __getitem__(self, i):
        return torch.rand(()) + 0 * i


def test_loader_workers_are_seeded_per_seed_epoch_rank_and_worker():
    def draws(rank, epoch):
        data = _Draws()
        data.epoch = epoch
        loader = DataLoader(data, batch_size=2, num_workers=2, worker_init_fn=WorkerSeeder(7, rank))
        return torch.cat(list(loader))

    a = draws(0, 0)
    assert torch.equal(a, draws(0, 0))  # reproducible
    assert not torch.equal(a, draws(1, 0)) and not torch.equal(a, draws(0, 1))
    assert not torch.equal(a[:2], a[2:4])  # the two workers differ


def test_unreadable_and_wrong_size_images_are_skipped_and_counted(tmp_path):
    path = _captioned_parquet(tmp_path, n_good=8, size=32)
    ds = PairedDataset(
        path,
        size=32,
        crop="none",
        pipeline=None,
        caption_column="llava_short",
        long_caption_column="llava_long",
    )
    with pytest.warns(UserWarning, match="skipping unreadable"):
        broken, wrong = ds[5], ds[9]
    assert broken["skipped"] == 1 and broken["path"].endswith("05.png")
    assert wrong["skipped"] == 1 and wrong["path"].endswith("00.png")  # the last row: wraps
    assert ds[0]["skipped"] == 0


def test_fsdp_and_deepspeed_are_refused_in_one_line():
    from accelerate.utils import DistributedType

    from diffbir.training.loop import check_distributed

    class Fake:
        distributed_type = DistributedType.FSDP

    with pytest.raises(ConfigError, match="^FSDP is not supported by diffbir train: use one"):
        check_distributed(Fake())
    Fake.distributed_type = DistributedType.DEEPSPEED
    with pytest.raises(ConfigError, match="^DeepSpeed is not supported"):
        check_distributed(Fake())
    Fake.distributed_type = DistributedType.MULTI_CPU
    check_distributed(Fake())  # DDP on CPUs (and GPUs) is what the loop supports


# ---------------------------------------------------------------------- batched degradation


class _FakeBatchDegradation:
    """Stands in for the release's batched Real-ESRGAN degradation: a pool of one batch
    that returns the previous batch (images and prompts together), LQ = a darker HQ."""

    def __init__(self):
        self.pool, self.calls = None, 0

    def __call__(self, hq, prompts, generator):
        self.calls += 1
        out = (hq, list(prompts)) if self.pool is None else self.pool
        self.pool = (hq.clone(), list(prompts))
        return out[0], out[0] * 0.5, out[1]

    def state_dict(self):
        return {"calls": self.calls, "hq": self.pool[0], "prompts": self.pool[1]}

    def load_state_dict(self, state):
        self.calls, self.pool = state["calls"], (state["hq"], list(state["prompts"]))


def test_a_batched_degradation_gets_hq_batches_and_its_pool_is_checkpointed(tmp_path, monkeypatch):
    import diffbir.training.batch_degradation as batch_degradation
    import diffbir.training.stage2 as stage2
    from diffbir.training.config import load_config
    from diffbir.training.loop import train

    made = []
    monkeypatch.setattr(
        batch_degradation,
        "load_batch_degradation",
        lambda spec, device: made.append(_FakeBatchDegradation()) or made[-1],
    )
    for i in range(4):
        _image(tmp_path / "hq" / f"{i}.png", 64, i)
    overrides = [
        ("data.source", str(tmp_path / "hq")),
        ("data.pipeline", "realesrgan_batch"),
        ("model.tokenizer", str(TOKENIZER)),
        ("run.output_dir", str(tmp_path / "run")),
        ("run.max_steps", 4),
        ("run.save_every", 2),
        ("run.log_every", 0),
    ]
    cfg = load_config("stage2_tiny", "stage2", overrides)
    whole = train(cfg, stage2.make_stage2_task, progress=False, stop_after=2)
    assert made[0].calls == 2 and whole.step == 2
    state = torch.load(whole.checkpoints[-1] / "task_0.pt", weights_only=True)
    assert state["calls"] == 2 and state["hq"].shape == (2, 3, 64, 64)
    rest = train(cfg, stage2.make_stage2_task, progress=False, resume="latest")
    assert made[1].calls == 4 and rest.step == 4  # the pool continued from the checkpoint


# ---------------------------------------------------------------------- two processes

# The preset's own batched Real-ESRGAN degradation.
_V21_PIPELINE = "realesrgan_batch"

_SCRIPT = textwrap.dedent(
    """
    import json, sys
    from pathlib import Path
    import torch
    from diffbir.training.config import load_config, read_preset
    from diffbir.training.loop import train
    from diffbir.training.stage2 import make_stage2_task

    args = json.loads(Path(sys.argv[1]).read_text())
    torch.set_num_threads(1)
    tiny = read_preset("stage2_tiny")["model"]
    base = [
        ("data.source", args["source"]),
        ("data.size", 64),
        ("data.pipeline", args["pipeline"]),
        ("data.total_batch_size", 8),
        ("data.num_workers", 1),
        ("model.sd_checkpoint", None),
        ("model.cleaner", None),
        ("model.tokenizer", args["tokenizer"]),
        ("run.max_steps", 6),
        ("run.save_every", 3),
        ("run.log_every", 3),
        ("run.gradient_checkpointing", False),
        ("run.tensorboard", False),
        ("val.every", 0),
    ]
    base += [(f"model.{k}", tiny[k]) for k in ("unet_config", "vae_config", "text_config")]
    out = {}
    for name, stops in (("whole", [None]), ("resumed", [3, None])):
        cfg = load_config("stage2_v21", "stage2", base + [("run.output_dir", args[name])])
        results = []
        for i, stop in enumerate(stops):
            resume = "latest" if i else None
            results.append(train(cfg, make_stage2_task, progress=False, stop_after=stop, resume=resume))
        out[name] = {
            "losses": sum((r.losses for r in results), []),
            "counts": results[-1].counts,
            "first_counts": results[0].counts,
            "step": results[-1].step,
        }
    if torch.distributed.get_rank() == 0:
        Path(args["result"]).write_text(json.dumps(out))
    """
)


@pytest.mark.slow
def test_two_processes_train_the_scaled_down_v21_recipe_from_a_parquet_and_resume(tmp_path):
    from safetensors.torch import load_file

    source = _captioned_parquet(tmp_path / "data")  # 14 rows: 12 images, 2 unusable
    args = {
        "source": str(source),
        "pipeline": _V21_PIPELINE,
        "tokenizer": str(TOKENIZER),
        "whole": str(tmp_path / "whole"),
        "resumed": str(tmp_path / "resumed"),
        "result": str(tmp_path / "result.json"),
    }
    (tmp_path / "args.json").write_text(json.dumps(args))
    (tmp_path / "run.py").write_text(_SCRIPT)
    command = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2"]
    command += ["--standalone", str(tmp_path / "run.py"), str(tmp_path / "args.json")]
    env = {**os.environ, "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1"}
    run = subprocess.run(command, capture_output=True, text=True, timeout=300, env=env)
    assert run.returncode == 0, run.stderr[-3000:]
    out = json.loads((tmp_path / "result.json").read_text())
    whole, resumed = out["whole"], out["resumed"]

    # The resumed run continues the same data, draws and weights as the whole one.
    assert resumed["step"] == whole["step"] == 6
    assert resumed["losses"] == whole["losses"]
    a = load_file(tmp_path / "whole" / "checkpoints" / "step_00000006" / "model.safetensors")
    b = load_file(tmp_path / "resumed" / "checkpoints" / "step_00000006" / "model.safetensors")
    assert all(torch.equal(a[k], b[k]) for k in a)
    assert resumed["first_counts"]["images"] == 24  # counted up to the interruption...
    assert resumed["counts"] == whole["counts"]  # ...and carried through the checkpoint
    state = json.loads(
        (tmp_path / "resumed" / "checkpoints" / "step_00000006" / "state.json").read_text()
    )
    assert state["counts"] == whole["counts"]
    assert state["data"] == {
        "micro_batches": 6,
        "epoch": 6,
        "batch": 0,
        "num_records": 14,
        "global_batch": 8,
    }
    assert (tmp_path / "resumed" / "data_list.npz").is_file()  # listed once, reused
    if _V21_PIPELINE == "realesrgan_batch":  # each process's training pool is kept
        last = tmp_path / "resumed" / "checkpoints" / "step_00000006"
        assert (last / "task_0.pt").is_file() and (last / "task_1.pt").is_file()

    counts = whole["counts"]
    n = counts["images"]
    assert n == 6 * 8  # 6 steps of the total batch of 8, split 4 + 4
    # Unreadable entries (rows 5 and 9) are skipped as often as the order reaches them:
    # one global batch of 8 per epoch (14 // 8), from the (seed, epoch) permutation.
    expected = sum(
        int(i in (5, 9))
        for e in range(6)
        for i in np.random.default_rng([231, e]).permutation(14)[:8]
    )
    assert expected > 0 and counts["skipped_images"] == expected
    # Condition noise on every sample, t uniform in [0, 200): mean 99.5, sd 58 / sqrt(48).
    assert counts["cond_noised"] == n and counts["cond_noise_t_max"] < 200
    assert abs(counts["cond_noise_t_sum"] / n - 99.5) < 4 * 58 / np.sqrt(n)
    # Prompts: dropped at 0.2, then long at 0.2 of the rest (4 binomial standard deviations).
    kinds = counts["prompt_empty"] + counts["prompt_short"] + counts["prompt_long"]
    assert kinds == n
    assert abs(counts["prompt_empty"] - 0.2 * n) < 4 * np.sqrt(n * 0.16)
    kept = n - counts["prompt_empty"]
    assert abs(counts["prompt_long"] - 0.2 * kept) < 4 * np.sqrt(kept * 0.16)
    assert f"diffbir: {expected} unreadable training image(s) skipped" in run.stdout
