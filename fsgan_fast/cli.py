"""The ``fsgan-fast`` command: info | demo | train | generate | export."""

from __future__ import annotations

import argparse
import json
import os
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


# ---------------------------------------------------------------------------------------------------
# train / generate

class _HelpFormatter(argparse.ArgumentDefaultsHelpFormatter):
    """Shows defaults, except None (set by --preset or computed) and off flags."""

    def _get_help_string(self, action):
        if action.default is None or action.default is False or action.default is argparse.SUPPRESS:
            return action.help
        return super()._get_help_string(action)


class CLIError(Exception):
    """A user-facing problem: printed as one line, exit status 2."""


def _channels(text: str) -> tuple[int, ...]:
    try:
        values = tuple(int(v) for v in text.split(","))
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected comma-separated integers such as 32,64,128, got {text!r}") from None
    return values


def _positive(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be >= 1, got {value}")
    return value


def _non_negative(text: str) -> int:
    value = int(text)
    if value < 0:
        raise argparse.ArgumentTypeError(f"must be >= 0, got {value}")
    return value


def _cmd_train_lofgan(args: argparse.Namespace) -> int:
    import fsgan_fast
    from fsgan_fast.losses import LoFGANLossWeights
    from fsgan_fast.models.lofgan import LoFGANConfig
    from fsgan_fast.train.lofgan import PRESETS, LoFGANTrainConfig, train_lofgan

    preset_name = args.preset if args.preset != "auto" else ("demo" if args.data == "builtin" else "paper")
    preset = dict(PRESETS[preset_name])
    for key in preset:
        if getattr(args, key) is not None:
            preset[key] = getattr(args, key)
    if args.backend is not None:
        fsgan_fast.set_backend(args.backend)
    try:  # invalid combinations (size vs channels, K, ema) are user errors, not crashes
        model_cfg = LoFGANConfig(
            size=preset["size"],
            shots=args.shots,
            gen_channels=preset["gen_channels"],
            dis_channels=preset["dis_channels"],
            dis_max_channels=preset["dis_max_channels"],
            rate=args.rate,
        )
        weights = LoFGANLossWeights(local=args.w_local, gp=args.w_gp)
        train_cfg = LoFGANTrainConfig(
            iters=preset["iters"],
            batch=preset["batch"],
            lr=args.lr,
            amp=args.amp,
            ema=args.ema,
            recon=args.recon,
            flip=args.flip,
            compile=args.compile,
            weights=weights,
        )
    except ValueError as e:
        raise CLIError(str(e)) from e
    resume = None
    if args.resume is not None:
        resume = os.path.join(args.out, "checkpoint.pt") if args.resume == "last" else args.resume
    ckpt = train_lofgan(
        args.data,
        args.out,
        model_cfg,
        train_cfg,
        seen=args.seen,
        split=args.split,
        seed=args.seed,
        device=args.device,
        resume=resume,
        log_every=args.log_every,
        sample_every=preset["sample_every"],
        ckpt_every=preset["ckpt_every"],
        progress=not args.no_progress,
    )
    import torch.distributed as dist

    if dist.is_initialized():  # joined by train_lofgan under torchrun
        dist.destroy_process_group()
    if int(os.environ.get("RANK", 0)) == 0:
        samples = os.path.join(args.out, "samples")
        print(f"{preset_name} preset, {train_cfg.iters} steps: checkpoint {ckpt}, samples in {samples}")
    return 0


def _cmd_generate_lofgan(args: argparse.Namespace) -> int:
    import torch

    import fsgan_fast
    from fsgan_fast.models.lofgan import similarity_figure
    from fsgan_fast.train.lofgan import load_lofgan
    from fsgan_fast.utils.images import read_image, save_grid, save_image

    if args.backend is not None:
        fsgan_fast.set_backend(args.backend)
    device = torch.device(args.device or ("cuda" if torch.cuda.is_available() else "cpu"))
    model = load_lofgan(args.ckpt, device)
    if len(args.shots) < 2:
        raise CLIError(f"--shots needs at least 2 images (a base and a reference), got {len(args.shots)}")
    if args.no_ema and model.gen_ema is None:
        raise CLIError("--no-ema given but the checkpoint has no EMA generator to skip")
    size = model.cfg.size
    try:
        shots = torch.stack([read_image(p, size) for p in args.shots]).float().div_(127.5).sub_(1).to(device)
    except ValueError as e:
        raise CLIError(str(e)) from e
    gen = torch.Generator(device).manual_seed(args.seed)
    fakes = model.generate(shots, args.n, gen, batch_size=args.batch_size, use_ema=not args.no_ema)
    out = args.out
    os.makedirs(out, exist_ok=True)
    width = len(str(max(args.n - 1, 0)))
    for i, img in enumerate(fakes):
        save_image(img, os.path.join(out, f"{i:0{width}d}.png"))
    # the shots on the first row (padded with white), then the generations
    ncol = max(len(shots), min(args.n, 8))
    blank = torch.ones(ncol - len(shots), *shots.shape[1:], device=device)
    grid_path = save_grid(torch.cat([shots, blank, fakes]), os.path.join(out, "grid.png"), ncol)
    print(f"wrote {args.n} images and {grid_path}")
    if args.similarity:
        maps = model.similarity_maps(shots, gen, use_ema=not args.no_ema)
        fig_path = save_image(similarity_figure(shots, maps), os.path.join(out, "similarity.png"), (0.0, 1.0))
        print(f"wrote {fig_path}")
    return 0


def _add_train_lofgan(sub) -> None:
    p = sub.add_parser(
        "lofgan",
        help="train LoFGAN (k-shot generation by local fusion)",
        description=(
            "Train LoFGAN on few-shot image classes. Writes RUN/checkpoint.pt (latest; exact resume), "
            "RUN/metrics.jsonl, RUN/samples/step_*.png (rows: K shots, then generations; seen classes first, "
            "then unseen), RUN/split.json (seen/unseen classes) and RUN/config.json. Options left unset come "
            "from --preset. Multi-GPU: torchrun --nproc_per_node N -m fsgan_fast.cli train lofgan ..."
        ),
        formatter_class=_HelpFormatter,
    )
    p.add_argument("--data", required=True,
                   help="'builtin' (16 photo classes from scikit-image, no download), a folder with one sub-folder "
                        "of images per class, or an official LoFGAN .npy [classes, images, H, W, 3]")
    p.add_argument("--out", required=True, help="run directory")
    p.add_argument("--preset", choices=("auto", "demo", "paper"), default="auto",
                   help="defaults for size, channels, batch, iters and sample/checkpoint intervals: 'demo' = 64 px, "
                        "G 32,64,64,64, D 16..128, batch 8, 300 iters (minutes on a CPU); 'paper' = the official "
                        "128 px model, batch 8, 100000 iters; 'auto' = demo for --data builtin, else paper")
    p.add_argument("--size", type=_positive,
                   help="image side in pixels (multiple of 2^(len(gen-channels)-1)) (default: from --preset)")
    p.add_argument("--shots", type=_positive, default=3, help="K, images per episode (>= 2)")
    p.add_argument("--batch", type=_positive,
                   help="episodes per step (per process under torchrun) (default: from --preset)")
    p.add_argument("--iters", type=_positive,
                   help="training steps (one D step + one G step each) (default: from --preset)")
    p.add_argument("--lr", type=float, default=1e-4,
                   help="Adam learning rate of G and D; constant for half the run, then linear decay to 0")
    p.add_argument("--gen-channels", type=_channels,
                   help="G encoder widths, comma-separated (decoder mirrors) (default: from --preset)")
    p.add_argument("--dis-channels", type=_positive, help="D stem width (doubled per stage) (default: from --preset)")
    p.add_argument("--dis-max-channels", type=_positive, help="D width cap (default: from --preset)")
    p.add_argument("--rate", type=float, default=0.5, help="eta, the fraction of base feature positions fused")
    p.add_argument("--w-local", type=float, default=0.5, help="weight of G's local reconstruction loss")
    p.add_argument("--w-gp", type=float, default=10.0, help="weight of D's R1 penalty on the true-class logit")
    p.add_argument("--recon", choices=("nearest", "area"), default="nearest",
                   help="downsampling in the local reconstruction loss: nearest (official) or area (cell means)")
    p.add_argument("--amp", choices=("none", "bf16", "fp16"), default="none",
                   help="mixed precision: bf16 autocast (recommended on GPUs), or fp16 autocast with loss "
                        "scaling (D's pass over the real images, which the R1 penalty differentiates twice, "
                        "stays fp32)")
    p.add_argument("--ema", type=float, nargs="?", const=0.999, default=0.0, metavar="DECAY",
                   help="keep an EMA of G for samples and generation (--ema alone: decay 0.999; 0 = off)")
    p.add_argument("--flip", action="store_true", help="random horizontal flips of the shots (off officially)")
    p.add_argument("--seen", type=_positive,
                   help="number of seen (training) classes; the rest are held out (default: 80%%)")
    p.add_argument("--split", choices=("random", "first"), default="random",
                   help="seen classes: a seeded random choice, or the first --seen ones (official .npy files: "
                        "flower 85, animal 119, vggface 1802)")
    p.add_argument("--sample-every", type=_non_negative,
                   help="steps between sample grids (0 = only at the end) (default: from --preset)")
    p.add_argument("--ckpt-every", type=_non_negative,
                   help="steps between checkpoints (0 = only at the end) (default: from --preset)")
    p.add_argument("--log-every", type=_positive, default=10, help="steps between metrics lines / progress updates")
    p.add_argument("--resume", nargs="?", const="last", metavar="CKPT",
                   help="continue from a checkpoint (--resume alone: OUT/checkpoint.pt); the model config and "
                        "class split come from the run, other options from this command line")
    p.add_argument("--device",
                   help="torch device (default: cuda if available, else cpu; cuda:LOCAL_RANK under torchrun)")
    p.add_argument("--seed", type=int, default=0, help="seed of the weights, the split, the dataset and the episodes")
    p.add_argument("--compile", action="store_true", help="torch.compile G and D (D's penalty pass stays eager)")
    p.add_argument("--backend", choices=("auto", "reference", "triton", "cuda", "cpu"),
                   help="implementation of the local fusion op (default: auto, see 'fsgan-fast info')")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    p.set_defaults(func=_cmd_train_lofgan)


def _add_generate_lofgan(sub) -> None:
    p = sub.add_parser(
        "lofgan",
        help="generate images of a new class from K >= 2 of its images",
        description="Writes OUT/<i>.png for every generation and OUT/grid.png (shots on the first row).",
        formatter_class=_HelpFormatter,
    )
    p.add_argument("--ckpt", required=True, help="checkpoint written by 'fsgan-fast train lofgan' (RUN/checkpoint.pt)")
    p.add_argument("--shots", nargs="+", required=True, metavar="IMAGE",
                   help="K >= 2 images of one class (centre-cropped and resized to the model size)")
    p.add_argument("--n", type=_non_negative, default=16, help="number of images to generate")
    p.add_argument("--out", required=True, help="output folder")
    p.add_argument("--similarity", action="store_true",
                   help="also write OUT/similarity.png: the fusion's cosine-similarity maps (paper section 4.5)")
    p.add_argument("--no-ema", action="store_true", help="use the trained G rather than its EMA copy")
    p.add_argument("--batch-size", type=_positive, default=64, help="images decoded at once")
    p.add_argument("--seed", type=int, default=0, help="seed of the fusion randomness")
    p.add_argument("--device", help="torch device (default: cuda if available, else cpu)")
    p.add_argument("--backend", choices=("auto", "reference", "triton", "cuda", "cpu"),
                   help="implementation of the local fusion op (default: auto)")
    p.set_defaults(func=_cmd_generate_lofgan)


# ---------------------------------------------------------------------------------------------------
# export

FP32_PARITY = 1e-4  # max |export - eager| / max |eager| for fp32 exports
LOW_PRECISION_FACTOR = 4  # fp16/bf16 exports: mean error at most this times eager's in the same precision


def _batch_range(text: str) -> tuple[int, int, int]:
    from fsgan_fast.export.graphs import parse_batch_range

    try:
        return parse_batch_range(text)
    except ValueError as e:
        raise argparse.ArgumentTypeError(str(e)) from None


EXPORT_SUFFIXES = {"onnx": (".onnx",), "tensorrt": (".plan", ".engine", ".trt"), "aoti": (".pt2",)}


def _export_device(args: argparse.Namespace) -> "torch.device":
    import torch

    if args.format == "onnx":
        return torch.device("cpu")  # traced and checked with onnxruntime on the CPU
    default = "cuda" if args.format == "tensorrt" or torch.cuda.is_available() else "cpu"
    try:
        device = torch.device(args.device or default)
    except RuntimeError as e:
        raise CLIError(f"--device: {e}") from None
    if device.type == "cuda" and not torch.cuda.is_available():
        raise CLIError(f"--device {device} asked for, but torch sees no CUDA device")
    if device.type not in ("cpu", "cuda"):
        raise CLIError(f"--device must be cpu or cuda[:N], got {device}")
    return device


def _cmd_export(args: argparse.Namespace) -> int:
    import torch

    from fsgan_fast import export
    from fsgan_fast.train.lofgan import load_lofgan

    precision = "fp16" if args.fp16 else "bf16" if args.bf16 else "fp32"
    if args.format != "aoti" and args.lowering != "reference":
        raise CLIError(f"--lowering {args.lowering} applies to --format aoti only (ONNX graphs hold standard ops)")
    if not args.out.endswith(EXPORT_SUFFIXES[args.format]):
        raise CLIError(f"--out for --format {args.format} must end in {' or '.join(EXPORT_SUFFIXES[args.format])}, "
                       f"got {args.out!r}")
    device = _export_device(args)
    if args.format == "tensorrt":
        from fsgan_fast.export.tensorrt import tensorrt_unavailable

        reason = tensorrt_unavailable(device)
        if reason is not None:
            raise CLIError(f"cannot build a TensorRT engine here: {reason}")
    if args.format in ("onnx", "tensorrt"):
        from fsgan_fast.export.onnx import onnx_unavailable

        reason = onnx_unavailable()
        if reason is not None:
            raise CLIError(reason)
    model = load_lofgan(args.ckpt, device)
    if args.no_ema and model.gen_ema is None:
        raise CLIError("--no-ema given but the checkpoint has no EMA generator to skip")

    def graph_of(dtype: torch.dtype) -> export.GeneratorGraph:
        # a copy in the dtype: the graph itself carries the precision (TensorRT 11 is strongly typed)
        return export.generator_graph(model, single_episode=args.single_episode, use_ema=not args.no_ema).to(dtype)

    dtype = {"fp32": torch.float32, "fp16": torch.float16, "bf16": torch.bfloat16}[precision]
    out, start = args.out, time.perf_counter()
    try:
        if args.format == "onnx":
            path = export.export_onnx(graph_of(dtype), out, batch=args.batch, opset=args.opset)
            make_runner = lambda: export.ORTGenerator(path)  # noqa: E731
        elif args.format == "tensorrt":
            from fsgan_fast.export.tensorrt import TRTGenerator, build_engine

            onnx_path = os.path.splitext(out)[0] + ".onnx"
            export.export_onnx(graph_of(dtype).to(device="cpu"), onnx_path, batch=args.batch, opset=args.opset)
            # IEEE fp32 for fp32 engines: TF32 would fail the 1e-4 parity check on Ampere and newer
            path = build_engine(onnx_path, out, precision=precision, batch=args.batch, timing_cache=args.timing_cache,
                                strict_fp32=precision == "fp32")
            make_runner = lambda: TRTGenerator(path, device)  # noqa: E731
        else:
            path = export.package_aoti(graph_of(dtype), out, batch=args.batch, lowering=args.lowering)
            make_runner = lambda: export.AOTIGenerator(path, device)  # noqa: E731
    except (ValueError, RuntimeError, FileNotFoundError, ImportError) as e:
        raise CLIError(f"export failed: {e}") from e
    print(f"wrote {path} ({args.format}, {precision}, batch {':'.join(map(str, args.batch))}) "
          f"in {time.perf_counter() - start:.1f} s")
    if not args.no_verify:
        _verify_export(args, make_runner, graph_of, dtype, precision)
    return 0


def _verify_export(args, make_runner, graph_of, dtype, precision: str) -> None:
    """Run the export against fp32 PyTorch on random inputs; CLIError when it does not match."""
    import torch

    lo, opt, hi = args.batch
    sizes = tuple(sorted({lo, opt, hi} if hi <= 64 else {lo, opt}))
    reference = graph_of(torch.float32)
    try:
        errs = reference.compare(make_runner(), sizes)
    except Exception as e:  # e.g. onnxruntime's CPU provider has no bf16 convolution
        if precision == "fp32":
            raise CLIError(f"the export was written but does not run: {e}") from e
        print(f"parity run skipped: the {precision} export cannot run here ({str(e).splitlines()[0][:200]})")
        return
    print(f"vs fp32 PyTorch at batch {list(sizes)}: max |err| {errs['max_abs_err']:.2e} "
          f"(relative {errs['max_rel_err']:.2e}), mean |err| {errs['mean_abs_err']:.2e}")
    if precision == "fp32":
        ok = errs["max_rel_err"] <= FP32_PARITY
        print(f"  {'ok' if ok else 'FAILED'}: tolerance {FP32_PARITY:.0e} relative")
    else:
        # Reduced precision flips near-tied matches of the fusion, each flip moving a whole feature cell,
        # so the max error is large by nature and the mean varies with the number of flips. The bar is
        # the eager model in the same precision; the factor catches broken exports, not rounding.
        eager = graph_of(dtype).to(device=next(reference.module.parameters()).device)
        base = reference.compare(eager.run, sizes)
        ok = errs["mean_abs_err"] <= LOW_PRECISION_FACTOR * base["mean_abs_err"] + 1e-3
        print(f"  {'ok' if ok else 'FAILED'}: eager PyTorch in {precision} has mean |err| {base['mean_abs_err']:.2e}; "
              f"the export may have at most {LOW_PRECISION_FACTOR}x that (+1e-3)")
    if not ok:
        raise CLIError(f"the exported {args.format} generator does not match PyTorch")


def _add_export(sub) -> None:
    p = sub.add_parser(
        "lofgan",
        help="export a trained LoFGAN generator",
        description=(
            "Export the generator of a checkpoint. Graph inputs: shots [B,K,3,S,S] (or [K,3,S,S] with "
            "--single-episode), base [B] int64, positions [B,n] int64, alpha [B,K]; output images [B,3,S,S]. "
            "The file's metadata says how to draw base/positions/alpha. After writing, the export is run "
            "against PyTorch on random inputs and the error printed (skip with --no-verify)."
        ),
        formatter_class=_HelpFormatter,
    )
    p.add_argument("--ckpt", required=True, help="checkpoint written by 'fsgan-fast train lofgan' (RUN/checkpoint.pt)")
    p.add_argument("--format", required=True, choices=("onnx", "tensorrt", "aoti"),
                   help="onnx: standard-op ONNX file (checked against TensorRT's parser support list); "
                        "tensorrt: a serialized engine (writes OUT minus its suffix + .onnx too; needs tensorrt and "
                        "a GPU); aoti: a torch.export + AOTInductor package (.pt2) for the --device")
    p.add_argument("--out", required=True, help="output file (.onnx, .engine/.plan, or .pt2)")
    p.add_argument("--batch", type=_batch_range, default=(1, 8, 64), metavar="MIN:OPT:MAX",
                   help="dynamic batch range; OPT is what TensorRT tunes for; a single number fixes the batch")
    precision = p.add_mutually_exclusive_group()
    precision.add_argument("--fp16", action="store_true",
                           help="export the generator in fp16 (ONNX graph, TensorRT engine or AOTInductor package)")
    precision.add_argument("--bf16", action="store_true",
                           help="export in bf16 (onnxruntime's CPU provider cannot run bf16 graphs: no parity run)")
    p.add_argument("--single-episode", action="store_true",
                   help="shots [K,3,S,S] encoded once and shared by the batch (generation at scale from one episode)")
    p.add_argument("--no-ema", action="store_true", help="export the trained G rather than its EMA copy")
    p.add_argument("--lowering", choices=("reference", "native"), default="reference",
                   help="aoti only: 'reference' compiles the fusion from standard ops (loads with torch alone); "
                        "'native' calls fsgan_fast's C++/CUDA kernel (needs fsgan_fast.ops or libfsgan_fast_ops)")
    p.add_argument("--opset", type=int, default=18, choices=(18, 19, 20), help="ONNX opset (TensorRT parses up to 20)")
    p.add_argument("--timing-cache", help="tensorrt only: timing cache file, read if present and updated")
    p.add_argument("--device", help="aoti/tensorrt: device to compile and verify on (default: cuda if available, "
                                    "else cpu); onnx is traced and verified on the CPU")
    p.add_argument("--no-verify", action="store_true", help="skip the parity run against PyTorch")
    p.set_defaults(func=_cmd_export)


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

    p = sub.add_parser("train", help="train a model", description="Train a model; see 'fsgan-fast train MODEL --help'.")
    _add_train_lofgan(p.add_subparsers(dest="model", required=True, metavar="MODEL"))

    p = sub.add_parser("generate", help="generate images from a trained checkpoint",
                       description="Generate from a checkpoint; see 'fsgan-fast generate MODEL --help'.")
    _add_generate_lofgan(p.add_subparsers(dest="model", required=True, metavar="MODEL"))

    p = sub.add_parser("export", help="export a generator to ONNX, TensorRT or AOTInductor",
                       description="Export a trained generator; see 'fsgan-fast export MODEL --help'.")
    _add_export(p.add_subparsers(dest="model", required=True, metavar="MODEL"))
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    from fsgan_fast.backends import BackendUnavailableError
    from fsgan_fast.data import DatasetError
    from fsgan_fast.train.loop import CheckpointError

    try:
        return args.func(args)
    except (CLIError, DatasetError, CheckpointError, BackendUnavailableError) as e:
        parser.exit(2, f"fsgan-fast: error: {e}\n")


if __name__ == "__main__":
    sys.exit(main())
