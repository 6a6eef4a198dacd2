"""The ``fsgan-fast`` command: info | demo (and the model commands as they land)."""

from __future__ import annotations

import argparse
import json
import sys
import time


def _cmd_info(args: argparse.Namespace) -> int:
    import fsgan_fast

    data = fsgan_fast.info()
    print(json.dumps(data, indent=2, default=str) if args.json else fsgan_fast.format_info(data))
    return 0


def _cmd_demo(args: argparse.Namespace) -> int:
    """Fuse real photo features with every available backend and check they agree."""
    import torch

    import fsgan_fast
    from fsgan_fast import backends
    from fsgan_fast.ops.lfm import lfm_fuse_reference

    device = torch.device(args.device)
    gen = torch.Generator().manual_seed(args.seed)
    feats = _demo_features(args.batch, args.shots, args.channels, args.grid, gen).to(device)
    layer = fsgan_fast.nn.LocalFusion(rate=args.rate)
    base, positions, alpha = layer.sample(args.batch, args.shots, args.grid, args.grid, device, gen)
    expected, expected_idx = lfm_fuse_reference(feats.double(), base, positions, alpha.double())
    print(f"LoFGAN local fusion on {args.batch}x{args.shots} shots, {args.channels}x{args.grid}x{args.grid} features "
          f"from scikit-image photos, n={positions.shape[1]} positions, device {device}")
    for name in backends.BACKENDS:
        reason = backends.why_unavailable("lfm_fuse", name, device, feats.dtype)
        if reason is not None:
            print(f"  {name:<10} skipped: {reason}")
            continue
        fused, ref_idx = fsgan_fast.ops.lfm_fuse(feats, base, positions, alpha, backend=name)
        start = time.perf_counter()
        for _ in range(args.repeat):
            fused, ref_idx = fsgan_fast.ops.lfm_fuse(feats, base, positions, alpha, backend=name)
        if device.type == "cuda":
            torch.cuda.synchronize()
        ms = (time.perf_counter() - start) / args.repeat * 1e3
        err = (fused.double() - expected).abs().max().item()
        same = (ref_idx == expected_idx).float().mean().item()
        print(f"  {name:<10} {ms:8.3f} ms/call  max|err| {err:.2e}  matches equal {same:6.1%}")
    return 0


def _demo_features(B: int, K: int, C: int, grid: int, gen) -> "torch.Tensor":
    """[B,K,C,grid,grid] features: random crops of scikit-image's photos under a fixed random conv."""
    import numpy as np
    import torch
    import torch.nn.functional as F
    from skimage import data as skdata

    photos = [skdata.astronaut(), skdata.coffee(), skdata.chelsea(), skdata.rocket()]
    imgs = []
    for i in range(B * K):
        p = photos[i % len(photos)]
        h, w = p.shape[:2]
        y = int(torch.randint(0, h - 128, (1,), generator=gen))
        x = int(torch.randint(0, w - 128, (1,), generator=gen))
        imgs.append(torch.from_numpy(np.ascontiguousarray(p[y : y + 128, x : x + 128])).permute(2, 0, 1))
    img = torch.stack(imgs).float() / 127.5 - 1
    weight = torch.randn(C, 3, 8, 8, generator=gen) / 8
    feats = F.adaptive_avg_pool2d(F.leaky_relu(F.conv2d(img, weight, stride=4, padding=2), 0.2), grid)
    return feats.view(B, K, C, grid, grid).contiguous()


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="fsgan-fast", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser("info", help="versions, devices, built backends, and which backend each op uses")
    p.add_argument("--json", action="store_true", help="print machine-readable JSON")
    p.set_defaults(func=_cmd_info)

    p = sub.add_parser("demo", help="run LoFGAN's local fusion on photo features with every available backend")
    p.add_argument("--device", default="cpu", help="torch device (default: cpu)")
    p.add_argument("--batch", type=int, default=4, help="batch size B")
    p.add_argument("--shots", type=int, default=3, help="shots per episode K (>= 2)")
    p.add_argument("--channels", type=int, default=128, help="feature channels C")
    p.add_argument("--grid", type=int, default=8, help="feature grid size H = W")
    p.add_argument("--rate", type=float, default=0.5, help="selection rate eta in (0, 1]")
    p.add_argument("--repeat", type=int, default=10, help="timed calls per backend")
    p.add_argument("--seed", type=int, default=0, help="random seed")
    p.set_defaults(func=_cmd_demo)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    return args.func(args)


if __name__ == "__main__":
    sys.exit(main())
