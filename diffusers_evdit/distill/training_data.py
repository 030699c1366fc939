"""The training data of the distillation examples (``examples/train_mlcd.py``, ``examples/train_kd.py``): the dataset
and a loader that resumes mid-epoch exactly, text conditions cached by caption, and clean latents cached by clip.

These helpers read the scripts' ``argparse`` options (the groups of :mod:`.training`)."""

from __future__ import annotations

import contextlib
import json
import logging
import os
import sys

import torch
from torch.utils.data import DataLoader, Sampler

from .checkpoints import resume_checkpoint

__all__ = [
    "MAX_LATENT_CACHE_ITEMS",
    "LatentCache",
    "ResumableSampler",
    "build_data",
    "caption_conditions",
    "make_latent_cache",
]

logger = logging.getLogger(__name__)
MAX_LATENT_CACHE_ITEMS = 100_000  # --latent_cache encodes the whole dataset before the first step


class ResumableSampler(Sampler):
    """Endless, deterministic index stream sharded over processes, that can start at any micro-step.

    Global position ``g`` maps to ``perm_e[g % n]`` with ``perm_e`` a permutation seeded by ``(seed, e = g // n)``;
    micro-step ``c`` of process ``r`` (of ``w``) reads positions ``(c * w + r) * b + [0, b)``.
    """

    def __init__(self, num_items: int, batch_size: int, seed: int, rank: int = 0, world: int = 1,
                 start_micro_step: int = 0):
        self.n, self.b, self.seed, self.rank, self.world = num_items, batch_size, seed, rank, world
        self.start = start_micro_step
        self._perm: tuple[int, torch.Tensor] | None = None

    def _index(self, g: int) -> int:
        epoch = g // self.n
        if self._perm is None or self._perm[0] != epoch:
            gen = torch.Generator().manual_seed(self.seed * 1_000_003 + epoch)
            self._perm = (epoch, torch.randperm(self.n, generator=gen))
        return int(self._perm[1][g % self.n])

    def __iter__(self):
        c = self.start
        while True:
            base = (c * self.world + self.rank) * self.b
            for j in range(self.b):
                yield self._index(base + j)
            c += 1

    def __len__(self):  # endless; DataLoader only needs it for len(loader)
        return sys.maxsize



def caption_conditions(pipe, device, max_sequence_length: int, prompt_template=None, max_cached: int = 8192):
    """``captions -> conditioning dict`` (batched along dim 0), encoding each caption once with the pipeline's text
    encoder and keeping the most recent ``max_cached`` encodings (shared by train_mlcd.py and train_kd.py)."""
    from . import predictors as mlcd

    cache: dict[str, dict] = {}

    def conditions(captions: list[str]) -> dict:
        missing = [c for c in dict.fromkeys(captions) if c not in cache]
        if missing:
            enc = mlcd.encode_prompts(pipe, missing, device=device, max_sequence_length=max_sequence_length,
                                      prompt_template=prompt_template)
            for i, c in enumerate(missing):
                cache[c] = {k: v[i: i + 1] for k, v in enc.items()}
            while len(cache) > max_cached:
                cache.pop(next(iter(cache)))
        return {k: torch.cat([cache[c][k] for c in captions]) for k in cache[captions[0]]}

    return conditions


class LatentCache:
    """Clean training latents ``x0`` of a batch (shared by train_mlcd.py and train_kd.py).

    Without ``--cache_latents`` every batch goes through the VAE. With it, each dataset item's VAE posterior
    ``(mean, std)`` is encoded the first time the item is drawn and kept, and every later draw of the item samples
    ``mean + std * eps`` afresh: the VAE (often most of a small model's step) runs once per clip. With
    ``--latent_cache FILE`` (:meth:`load_or_build`) every clip's posterior is there before the first step.
    """

    def __init__(self, pipe, enabled: bool, num_items: int):
        self.pipe, self.enabled, self.num_items = pipe, enabled, num_items
        self.store: dict[int, tuple[torch.Tensor, torch.Tensor]] = {}

    @property
    def complete(self) -> bool:
        """Whether every item of the dataset is cached (then batches need no video)."""
        return self.enabled and len(self.store) == self.num_items

    def identity(self, dataset) -> dict:
        """What a cache file must have been made from: the dataset's settings and the VAE (config, weight sum)."""
        settings = {k: v for k, v in sorted(vars(dataset).items()) if isinstance(v, (bool, int, float, str))}
        vae = self.pipe.vae
        weight_sum = float(sum(p.detach().double().sum().item() for p in vae.parameters()))
        return {"dataset": type(dataset).__name__, "items": len(dataset), "settings": settings,
                "vae_config": json.loads(json.dumps(dict(vae.config), default=str)), "vae_weight_sum": weight_sum}

    @staticmethod
    def same_identity(a: dict, b: dict) -> bool:
        strip = [{k: v for k, v in x.items() if k != "vae_weight_sum"} for x in (a, b)]
        return strip[0] == strip[1] and abs(a["vae_weight_sum"] - b["vae_weight_sum"]) <= 1e-9 * max(
            1.0, abs(b["vae_weight_sum"]))

    def load_or_build(self, path: str, dataset, batch_size: int, num_workers: int = 0) -> None:
        """Fill the cache with every item's posterior: from ``path`` when it was made from the same data and VAE,
        else by encoding the whole dataset once and writing ``path`` (under a file lock, so that runs started side
        by side encode once: the others wait, then load)."""
        from tqdm.auto import tqdm

        from .. import data as evdit_data
        from . import predictors as mlcd

        self.enabled = True
        path = os.path.abspath(path)
        os.makedirs(os.path.dirname(path), exist_ok=True)
        ident = self.identity(dataset)
        with open(path + ".lock", "a") as lock, _file_lock(lock):
            if os.path.isfile(path):
                kept = torch.load(path, map_location="cpu")
                if self.same_identity(kept["identity"], ident):
                    logger.info("Latent cache: %d clips loaded from %s", len(kept["mean"]), path)
                    self._fill(kept["mean"], kept["std"])
                    return
                logger.warning("%s was made from other data or another VAE; encoding the dataset again.", path)
            loader = DataLoader(dataset, batch_size=batch_size, shuffle=False, collate_fn=evdit_data.collate_videos,
                                num_workers=num_workers)
            logger.info("Latent cache: encoding %d clips in %d batches into %s, once (runs with the same data and VAE "
                        "load it); on a CPU this can take many minutes", len(dataset), len(loader), path)
            means, stds = [], []
            for batch in tqdm(loader, desc="latent cache", disable=not sys.stderr.isatty()):
                mean, std = mlcd.encode_video_posteriors(self.pipe, batch["video"])
                means.append(mean.cpu())
                stds.append(std.cpu())
            mean, std = torch.cat(means), torch.cat(stds)
            torch.save({"identity": ident, "mean": mean, "std": std}, path + ".tmp")
            os.replace(path + ".tmp", path)
            logger.info("Latent cache: %d clips encoded into %s (%.0f MiB)", len(mean), path,
                        os.path.getsize(path) / 2**20)
            self._fill(mean, std)

    def _fill(self, mean: torch.Tensor, std: torch.Tensor) -> None:
        device = next(self.pipe.vae.parameters()).device
        mean, std = mean.to(device), std.to(device)
        self.store = {i: (mean[i: i + 1], std[i: i + 1]) for i in range(len(mean))}

    def latents(self, batch: dict, generator: torch.Generator) -> torch.Tensor:
        from . import predictors as mlcd

        if not self.enabled:
            return mlcd.encode_videos(self.pipe, batch["video"], generator=generator).float()
        indices = [int(i) for i in batch["index"]]
        missing = [j for j, i in enumerate(indices) if i not in self.store]
        if missing:
            mean, std = mlcd.encode_video_posteriors(self.pipe, batch["video"][missing])
            if not self.store:
                per_item = 2 * mean[0].numel() * mean.element_size() / 2**20
                logger.info("Latent cache: %.2f MiB a clip, up to %.0f MiB for the %d clips of the dataset.",
                            per_item, per_item * self.num_items, self.num_items)
            for k, j in enumerate(missing):
                self.store[indices[j]] = (mean[k: k + 1], std[k: k + 1])
        mean = torch.cat([self.store[i][0] for i in indices])
        std = torch.cat([self.store[i][1] for i in indices])
        return mlcd.draw_posterior(mean, std, generator).float()


@contextlib.contextmanager
def _file_lock(handle):
    """An exclusive lock on an open file for the duration of the block (no-op where ``fcntl`` is missing)."""
    try:
        import fcntl
    except ImportError:  # Windows: runs side by side may then encode twice
        yield
        return
    fcntl.flock(handle, fcntl.LOCK_EX)
    try:
        yield
    finally:
        fcntl.flock(handle, fcntl.LOCK_UN)


def make_latent_cache(args, pipe, dataset, loader):
    """The :class:`LatentCache` of ``--cache_latents`` / ``--latent_cache``; with a complete cache, the loader is
    replaced by one over the captions alone (same sampler: same order, no clip rendered). Returns both."""
    cache = LatentCache(pipe, args.cache_latents or bool(args.latent_cache), len(dataset))
    if args.latent_cache and len(dataset) > MAX_LATENT_CACHE_ITEMS:
        raise SystemExit(f"--latent_cache encodes every clip up front: {len(dataset)} clips is too many (at most "
                         f"{MAX_LATENT_CACHE_ITEMS}); set --synthetic_num_samples (e.g. 2048)")
    if args.latent_cache:
        cache.load_or_build(args.latent_cache, dataset, args.train_batch_size, args.dataloader_num_workers)
    if cache.complete and callable(getattr(dataset, "caption", None)):
        from .. import data as evdit_data

        loader = DataLoader(evdit_data.CaptionDataset(dataset), batch_size=loader.batch_size, sampler=loader.sampler,
                            collate_fn=evdit_data.collate_videos, num_workers=loader.num_workers)
    return cache, loader


def build_data(args, accelerator, output_dir: str):
    """The training data of the distillation examples (shared by train_mlcd.py and train_kd.py).

    Returns ``(dataset, validation_prompts, global_step, micro_step, loader)``: the synthetic or folder dataset, the
    validation prompts, the step restored from ``--resume_from_checkpoint`` (0 for a new run) and a data loader that
    continues exactly where that checkpoint stopped.
    """
    from .. import data as evdit_data

    if args.dataset == "synthetic":
        dataset = evdit_data.SyntheticVideoDataset(
            num_samples=args.synthetic_num_samples, seed=args.seed, num_frames=args.num_frames, height=args.height,
            width=args.width, split=args.synthetic_split)
    else:
        dataset = evdit_data.VideoFolderDataset(args.dataset, num_frames=args.num_frames, height=args.height,
                                                width=args.width, frame_stride=args.frame_stride)
    if args.validation_prompts:
        validation_prompts = list(args.validation_prompts)
    elif args.dataset == "synthetic":
        validation_prompts = [c for c, _ in evdit_data.heldout_prompts()[:2]]
    else:
        validation_prompts = [dataset.samples[i][1] for i in range(min(2, len(dataset)))]

    global_step = resume_checkpoint(accelerator, output_dir, args.resume_from_checkpoint)
    micro_step = global_step * args.gradient_accumulation_steps
    sampler = ResumableSampler(len(dataset), args.train_batch_size, args.seed, accelerator.process_index,
                               accelerator.num_processes, start_micro_step=micro_step)
    loader = DataLoader(dataset, batch_size=args.train_batch_size, sampler=sampler,
                        collate_fn=evdit_data.collate_videos, num_workers=args.dataloader_num_workers)
    return dataset, validation_prompts, global_step, micro_step, loader
