"""Print LiveGaze's speed figures as JSON: `python benchmarks/model_speed.py --preset configs/model/tiny.toml`."""

import argparse
import json

from gazegen.benchmark import DTYPES, bench_model


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--preset", default="configs/model/base.toml", help="ModelConfig TOML preset")
    parser.add_argument("--device", default="cpu", help="cpu, cuda, cuda:1, ...")
    parser.add_argument("--batch", type=int, default=1, help="images per batch")
    parser.add_argument("--compile", action="store_true", help="torch.compile each stage")
    parser.add_argument("--dtype", default="fp32", choices=sorted(DTYPES), help="autocast dtype (fp32: none)")
    parser.add_argument("--repeats", type=int, default=5, help="timed runs per figure (median)")
    parser.add_argument("--warmup", type=int, default=1, help="untimed runs before each figure")
    parser.add_argument("--gazes", type=int, default=4, help="G of the one-source x G gazes x V views grid")
    parser.add_argument("--views", type=int, default=4, help="V of the grid")
    parser.add_argument("--grid-repeats", type=int, default=3, help="timed runs of the grid comparison (median)")
    parser.add_argument("--set", action="append", default=[], dest="overrides", metavar="KEY=VALUE",
                        help="override a preset key, e.g. render.chunk_rays=1024 (repeatable)")
    args = parser.parse_args()
    result = bench_model(
        args.preset,
        args.device,
        args.batch,
        compile=args.compile,
        dtype=args.dtype,
        repeats=args.repeats,
        warmup=args.warmup,
        grid=(args.gazes, args.views),
        grid_repeats=args.grid_repeats,
        overrides=args.overrides,
    )
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
