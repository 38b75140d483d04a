"""Run a trained teacher once over the clean training images; publish its stage maps as shards.

    python jobs/precompute_features.py --teacher runs/teacher-digits-tiny/teacher.safetensors --out runs/features-digits
    python jobs/precompute_features.py --teacher T.safetensors --out s3://bucket/features/cifar100 --set data.root=/data/cifar

The data defaults to what the teacher was trained on (the data.* fields of its card);
--data FILE.yaml takes them from another config and --set data.KEY=VALUE overrides one.
Writes Arrow IPC shards and, last, manifest.json. Train on them with
    --set guidance.locality.source=shards --set guidance.locality.shards=OUT
S3: the endpoint, region and credentials come from AWS_ENDPOINT_URL, AWS_DEFAULT_REGION and
the standard credential chain.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))  # run from a checkout without installing

from raylg.errors import USER_ERRORS  # noqa: E402


def data_config(teacher_path: str, data_file: str | None, overrides: list[str]):
    """The DataConfig: the teacher card's data.* fields (or --data FILE's), then --set overrides."""
    from raylg import config as config_lib, teacher as teacher_lib

    if data_file:
        base = config_lib.load(data_file)
        flat = {k: v for k, v in config_lib.flatten(base).items() if k.startswith("data.")}
    else:
        card = teacher_lib.read_card(teacher_path)
        flat = {k: v for k, v in card.get("config", {}).items() if k.startswith("data.")}
    flat.update(config_lib.parse_set(overrides))
    bad = [k for k in flat if not k.startswith("data.")]
    if bad:
        raise config_lib.ConfigError(f"--set {bad[0]}: only data.* fields apply to precomputing features")
    return config_lib.unflatten(flat).data


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--teacher", required=True, help="teacher weights (.safetensors with its .json card beside)")
    parser.add_argument("--out", required=True, help="output directory or s3://bucket/prefix")
    parser.add_argument("--data", help="a YAML config whose data: section names the images (default: the teacher's)")
    parser.add_argument("--set", dest="overrides", action="append", default=[], metavar="data.KEY=VALUE",
                        help="override a data field, e.g. --set data.root=/data/cifar (repeatable)")
    parser.add_argument("--stages", help="comma-separated teacher stages to store (default: all)")
    parser.add_argument("--shard-mb", type=float, default=256, help="target shard size in MiB (default 256)")
    parser.add_argument("--batch-size", type=int, default=256)
    parser.add_argument("--device", default="auto", help="auto | cpu | cuda")
    parser.add_argument("--no-progress", action="store_true", help="no progress bar")
    args = parser.parse_args(argv)
    try:
        import torch

        from raylg import data, features, storage

        dcfg = data_config(args.teacher, args.data, args.overrides)
        bundle = data.build(dcfg)
        device = args.device if args.device != "auto" else ("cuda" if torch.cuda.is_available() else "cpu")
        stages = [int(s) for s in args.stages.split(",")] if args.stages else None
        m = features.precompute(args.teacher, bundle, args.out, stages=stages, shard_mb=args.shard_mb,
                                batch_size=args.batch_size, device=device, num_workers=dcfg.num_workers,
                                progress=not args.no_progress)
    except USER_ERRORS + (storage.StorageError,) as e:
        print(f"error: {e}", file=sys.stderr)
        raise SystemExit(2)
    st = m["stats"]
    print(f"{m['rows']} images of {m['dataset']['name']} ({m['dataset']['split']}, per_class {m['dataset']['per_class']}) "
          f"-> {len(m['shards'])} shard(s), {m['bytes'] / 2**20:.1f} MiB, {st['bytes_per_image']:.0f} bytes/image")
    print(f"{st['images_per_s']:.0f} images/s end to end ({st['teacher_images_per_s']:.0f} images/s in the teacher), "
          f"{st['seconds']:.1f}s")
    print(f"manifest: {features.manifest_uri(args.out)}")
    return m


if __name__ == "__main__":
    main()
