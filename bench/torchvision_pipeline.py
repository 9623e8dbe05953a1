"""Reference for `cargo xtask bench data`: the SimCLR two-view pipeline with torchvision
transforms v1 on PIL images and a `DataLoader` with worker processes, on CIFAR-10 images read
from the official binary layout. Prints one JSON object per image size, like the Rust side
(`crates/data/examples/bench_pipeline.rs`), so the two can be compared:

    python bench/torchvision_pipeline.py --data-dir ../shared/datasets --workers 2

At 96 px the source is STL-10's train split when DATA_DIR/stl10_binary exists, else CIFAR-10
upscaled by the random resized crop (the same choice as the Rust side).
"""
import argparse
import json
import os
import time

import numpy as np
import torch
import torchvision
from PIL import Image
from torchvision import transforms as T

CIFAR10_MEAN, CIFAR10_STD = (0.4914, 0.4822, 0.4465), (0.2470, 0.2435, 0.2616)
IMAGENET_MEAN, IMAGENET_STD = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)


def read_cifar_train(data_dir):
    folder = os.path.join(data_dir, "cifar-10-batches-bin")
    recs = [
        np.fromfile(os.path.join(folder, f"data_batch_{i}.bin"), dtype=np.uint8).reshape(-1, 3073)
        for i in range(1, 6)
    ]
    recs = np.concatenate(recs)
    return recs[:, 1:].reshape(-1, 3, 32, 32).transpose(0, 2, 3, 1).copy()  # N, H, W, C


def read_stl_train(data_dir):
    path = os.path.join(data_dir, "stl10_binary", "train_X.bin")
    if not os.path.isfile(path):
        return None
    x = np.fromfile(path, dtype=np.uint8).reshape(-1, 3, 96, 96)
    return x.transpose(0, 3, 2, 1).copy()  # column-major channels -> N, H, W, C


def simclr(size, mean, std):
    ops = [
        T.RandomResizedCrop(size),
        T.RandomHorizontalFlip(),
        T.RandomApply([T.ColorJitter(0.4, 0.4, 0.4, 0.1)], p=0.8),
        T.RandomGrayscale(p=0.2),
    ]
    if size >= 64:
        ops.append(T.RandomApply([T.GaussianBlur((size // 10) | 1, sigma=(0.1, 2.0))], p=0.5))
    ops += [T.ToTensor(), T.Normalize(mean, std)]
    return T.Compose(ops)


class TwoViews(torch.utils.data.Dataset):
    def __init__(self, images, transform):
        self.images, self.transform = images, transform

    def __len__(self):
        return len(self.images)

    def __getitem__(self, i):
        img = Image.fromarray(self.images[i])
        return self.transform(img), self.transform(img), i


def time_loader(images, transform, args, n):
    ds = TwoViews(images[:n], transform)
    loader = torch.utils.data.DataLoader(
        ds, batch_size=args.batch, shuffle=True, drop_last=True, num_workers=args.workers
    )
    it = iter(loader)
    next(it)  # warm-up: worker start-up is not timed
    start = time.perf_counter()
    count = 0
    for v1, v2, idx in it:
        count += len(idx)
    return count / (time.perf_counter() - start), count


def main():
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("--data-dir", default=os.environ.get("SELFSUP_DATA", "datasets"))
    p.add_argument("--workers", type=int, default=2)
    p.add_argument("--batch", type=int, default=256)
    p.add_argument("--images32", type=int, default=8000)
    p.add_argument("--images96", type=int, default=1500)
    args = p.parse_args()
    torch.manual_seed(0)
    cifar = read_cifar_train(args.data_dir)
    ips, n = time_loader(cifar, simclr(32, CIFAR10_MEAN, CIFAR10_STD), args, args.images32)
    common = {"workers": args.workers, "batch": args.batch, "torch": torch.__version__,
              "torchvision": torchvision.__version__}
    print(json.dumps({"size": 32, "images_per_sec": round(ips, 1), "images": n,
                      "source": "cifar10 train", **common}), flush=True)
    stl = read_stl_train(args.data_dir)
    src, name = (stl, "stl10 train (96 px)") if stl is not None else (cifar, "cifar10 train upscaled from 32 px")
    ips, n = time_loader(src, simclr(96, IMAGENET_MEAN, IMAGENET_STD), args, args.images96)
    print(json.dumps({"size": 96, "images_per_sec": round(ips, 1), "images": n, "source": name, **common}),
          flush=True)


if __name__ == "__main__":
    main()
