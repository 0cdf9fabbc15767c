#!/usr/bin/env python
"""One training epoch of images: the preprocessed in-memory cache vs decoding and resizing the PNGs every time.

    python benchmarks/bench_data_cache.py                       # the built-in synthetic i-CLEVR (18009 images)
    python benchmarks/bench_data_cache.py --train_data_dir DIR  # a course i-CLEVR folder

Both paths run through the same DataLoader settings and produce the same items ([-1, 1] float images and multi-hot
labels). The decoding path is slow, so it runs on a random subset (--max_images) and its epoch time is extrapolated.
"""

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run from a checkout; no install step

import argparse
import os
import time

import datasets
import numpy as np
import torch
from torch.utils.data import DataLoader, Subset

from pipeline.vocabulary import LabelVocabulary
from training.data import load_train_dataset, load_training_set, resize_image, to_pixel_values


class DecodingDataset(torch.utils.data.Dataset):
    """The naive path: every item opens the PNG, converts and resizes it."""

    def __init__(self, dataset: datasets.Dataset, resolution: int, vocabulary: LabelVocabulary):
        self.dataset, self.resolution, self.vocabulary = dataset, resolution, vocabulary

    def __len__(self) -> int:
        return len(self.dataset)

    def __getitem__(self, index: int) -> dict[str, torch.Tensor]:
        row = self.dataset[index]  # datasets decodes the PNG here
        pixels = to_pixel_values(resize_image(row["image"], self.resolution))
        return {"pixel_values": pixels, "class_labels": self.vocabulary.encode(row["labels"])}


def time_epoch(dataset: torch.utils.data.Dataset, batch_size: int, num_workers: int) -> float:
    loader = DataLoader(dataset, batch_size=batch_size, shuffle=True, num_workers=num_workers)
    start = time.perf_counter()
    seen = 0
    for batch in loader:
        seen += len(batch["pixel_values"])
    assert seen == len(dataset)
    return time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--train_data_dir", default=None, help="An i-CLEVR folder (default: the built-in render).")
    parser.add_argument("--cache_dir", default=None, help="Default: $ICLEVR_CACHE or ~/.cache/iclevr-diffusion.")
    parser.add_argument("--resolution", type=int, default=64)
    parser.add_argument("--batch_size", type=int, default=64)
    parser.add_argument("--num_workers", type=int, default=0, help="DataLoader workers, the same for both paths.")
    parser.add_argument("--max_images", type=int, default=2000, help="Images the decoding path reads (subset).")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    torch.manual_seed(args.seed)

    dataset = load_train_dataset(args.train_data_dir, cache_dir=args.cache_dir)  # renders the built-in set once
    start = time.perf_counter()
    training_set = load_training_set(args.train_data_dir, resolution=args.resolution, cache_dir=args.cache_dir)
    setup_seconds = time.perf_counter() - start
    n = len(training_set)

    cached_seconds = time_epoch(training_set, args.batch_size, args.num_workers)

    subset_size = min(args.max_images, n)
    subset = np.random.default_rng(args.seed).choice(n, subset_size, replace=False).tolist()
    decoding = Subset(DecodingDataset(dataset, args.resolution, training_set.vocabulary), subset)
    decoding_seconds = time_epoch(decoding, args.batch_size, args.num_workers)

    cached_rate, decoding_rate = n / cached_seconds, subset_size / decoding_seconds
    print(f"\n{n} images at {args.resolution}x{args.resolution}, batch {args.batch_size}, "
          f"{args.num_workers} DataLoader workers, {os.cpu_count()} CPUs, torch threads {torch.get_num_threads()}")
    print(f"load_training_set (preprocess on first use, else read the cache): {setup_seconds:8.2f} s")
    print(f"cached path,   full epoch:                     {cached_seconds:8.2f} s  {cached_rate:10.0f} images/s")
    label = "full epoch" if subset_size == n else f"{subset_size} images, epoch extrapolated"
    print(f"decoding path, {label + ':':<32} {n / decoding_rate:8.2f} s  {decoding_rate:10.0f} images/s")
    print(f"speed-up (cached / decoding images per second): {cached_rate / decoding_rate:.1f}x")


if __name__ == "__main__":
    main()
