"""Train the Fashion-MNIST MobileNetV2-style network shipped in dfq_gpu/assets.

Recipe (6 epochs by default): AdamW (lr 3e-3, weight decay 1e-4) with a one-cycle schedule, batch 128, random
crops (pad 2) and horizontal flips, label smoothing 0.05, seed 0. Prints the test accuracy
and writes the weights as safetensors.

    python scripts/train_fmnist.py --epochs 6 --out dfq_gpu/assets/fmnist_mobilenet.safetensors
"""

from __future__ import annotations

import argparse
import time

import torch
import torch.nn.functional as F
from safetensors.torch import save_file

from dfq_gpu.data import fashion_mnist
from dfq_gpu.evaluate import evaluate
from dfq_gpu.models.fmnist import FMNIST_WEIGHTS, fmnist_mobilenet


def augment(x: torch.Tensor, g: torch.Generator) -> torch.Tensor:
    n = x.shape[0]
    padded = F.pad(x, (2, 2, 2, 2), value=float(x.min()))
    dx = torch.randint(0, 5, (n,), generator=g)
    dy = torch.randint(0, 5, (n,), generator=g)
    out = torch.stack([padded[i, :, dy[i]:dy[i] + 28, dx[i]:dx[i] + 28] for i in range(n)])
    flip = torch.rand(n, generator=g) < 0.5
    out[flip] = out[flip].flip(-1)
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--epochs", type=int, default=6)
    ap.add_argument("--batch-size", type=int, default=128)
    ap.add_argument("--lr", type=float, default=3e-3)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--out", default=str(FMNIST_WEIGHTS))
    ap.add_argument("--threads", type=int, default=0, help="torch threads (0: torch's default)")
    args = ap.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)

    torch.manual_seed(args.seed)
    g = torch.Generator().manual_seed(args.seed)
    train = fashion_mnist("train")
    test = fashion_mnist("test")
    x_train, y_train = train.tensors
    model = fmnist_mobilenet().to(memory_format=torch.channels_last)
    opt = torch.optim.AdamW(model.parameters(), lr=args.lr, weight_decay=1e-4)
    steps = args.epochs * ((len(x_train) + args.batch_size - 1) // args.batch_size)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=args.lr, total_steps=steps)
    for epoch in range(args.epochs):
        model.train()
        t0 = time.time()
        perm = torch.randperm(len(x_train), generator=g)
        total = 0.0
        for i in range(0, len(perm), args.batch_size):
            idx = perm[i:i + args.batch_size]
            xb = augment(x_train[idx], g).contiguous(memory_format=torch.channels_last)
            yb = y_train[idx]
            loss = F.cross_entropy(model(xb), yb, label_smoothing=0.05)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            sched.step()
            total += loss.item() * len(idx)
        model.eval()
        m = evaluate(model, test, batch_size=500, progress=False)
        print(f"epoch {epoch + 1}/{args.epochs}: loss {total / len(x_train):.4f}, test top-1 {100 * m.top1:.2f}%, "
              f"{time.time() - t0:.0f}s", flush=True)
    model.eval()
    state = {k: v.detach().contiguous() for k, v in model.to(memory_format=torch.contiguous_format).state_dict().items()}
    save_file(state, args.out, metadata={"test_top1": f"{m.top1:.4f}", "epochs": str(args.epochs),
                                          "seed": str(args.seed)})
    print(f"saved {args.out} ({sum(v.numel() for v in state.values())} values), test top-1 {100 * m.top1:.2f}%")


if __name__ == "__main__":
    main()
