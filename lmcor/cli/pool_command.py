"""`lmcor pool`: build pools from the shared datasets, summarise pools, release pools.

  lmcor pool import --dataset=wmt --split=wmt22 --out=pools/wmt22 [--data_dir=../shared/data]
                    [--records=START:END] [--generators=A,B,...]
  lmcor pool stats pools/wmt22                      # or data/pools/<name>.jsonl.gz
  lmcor pool release POOL_DIR [POOL_DIR ...] [--out=data/pools]

Each prints one JSON object on stdout: the pool's statistics, or what was released.
"""
import argparse
import json
import sys

from tqdm import tqdm

from lmcor.cli.command_errors import report_error
from lmcor.data import pool_import, pool_release
from lmcor.data.importers import IMPORTERS
from lmcor.data.pool import PoolStats, read_pool, resolve_pool_path
from lmcor.paths import data_root


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="lmcor pool", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = p.add_subparsers(dest="command", required=True)
    imp = sub.add_parser("import", help="import a shared dataset as a pool")
    imp.add_argument("--dataset", required=True, choices=sorted(IMPORTERS))
    imp.add_argument("--split", required=True, help="dev/test (e2e, jfleg) or wmt21/wmt22/wmt23")
    imp.add_argument("--out", required=True,
                     help="output directory for the shards and their manifest.json")
    imp.add_argument("--data_dir", default=None,
                     help="the shared datasets (default: $LMCOR_DATA_DIR, else ../shared/data)")
    imp.add_argument("--shard_size", type=int, default=1000)
    imp.add_argument("--gzip", action="store_true", help="write .jsonl.gz shards")
    imp.add_argument("--overwrite", action="store_true", help="replace existing shards in --out")
    imp.add_argument("--records", metavar="START:END",
                     help="keep this Python slice of the imported records (e.g. 279:); each "
                          "keeps its own id")
    imp.add_argument("--generators", metavar="A,B,...",
                     help="keep only these candidates, in this order (every record must have "
                          "each of them)")
    stats = sub.add_parser("stats", help="count examples, references and candidates of a pool")
    stats.add_argument("pool", help="a pool file (a released data/pools/<name>.jsonl.gz too) or "
                                    "a directory of shards; relative paths also from the repo root")
    rel = sub.add_parser("release", help="validate finished sampled or imported pools and add "
                                         "them to the release folder (data/pools) with its "
                                         "manifest")
    rel.add_argument("pools", nargs="+", metavar="POOL_DIR",
                     help="sampling-job or `lmcor pool import` folders; each is released as "
                          "<folder name>.jsonl.gz")
    rel.add_argument("--out", default=pool_release.DEFAULT_OUT,
                     help="release folder (default: the checkout's data/pools)")
    return p


def cmd_import(args: argparse.Namespace) -> dict:
    return pool_import.import_pool(
        args.dataset, args.split, args.out, args.data_dir or data_root(),
        records=pool_import.parse_records(args.records),
        generators=pool_import.parse_generators(args.generators), shard_size=args.shard_size,
        compress=args.gzip, overwrite=args.overwrite)


def cmd_stats(args: argparse.Namespace) -> dict:
    stats = PoolStats()
    for _ in tqdm(read_pool(resolve_pool_path(args.pool), stats), desc="reading pool", unit="ex",
                  file=sys.stderr, mininterval=1.0):
        pass
    return {"pool": args.pool, **stats.to_dict()}


def cmd_release(args: argparse.Namespace) -> dict:
    return pool_release.release_pools(args.pools, args.out)


COMMANDS = {"import": cmd_import, "stats": cmd_stats, "release": cmd_release}


def main(argv=None) -> int:
    args = _parser().parse_args(argv)
    try:
        result = COMMANDS[args.command](args)
    except (OSError, ValueError) as e:
        return report_error(f"lmcor pool {args.command}", e)
    print(json.dumps(result, ensure_ascii=False))
    return 0
