"""polyfuse cache build|info|clear: the decode cache (data/cache.py) ahead of training, its size, its
removal; info|clear --features: the frozen towers' feature cache (encoders/feature_cache.py)."""
from __future__ import annotations

import time


def add_parser(sub):
    p = sub.add_parser("cache", help="decode a table into the on-disk decode cache; show or clear the cache")
    verbs = p.add_subparsers(dest="verb", required=True)
    b = verbs.add_parser("build", help="decode every input cell of a table into the cache (in parallel; "
                         "an interrupted build continues where it stopped)")
    b.add_argument("table", help="table (.csv/.tsv/.jsonl/.parquet)")
    b.add_argument("--run", help="use this run folder's processors (what evaluate, predict and embed read)")
    b.add_argument("--config", help="YAML/JSON config whose processor settings to use (what train reads)")
    b.add_argument("--size", help="named model size (tiny, small, base), as given to train")
    b.add_argument("--on-bad-row", choices=["error", "skip"], default="skip",
                   help="skip (default): list bad rows and go on; error: stop at the first")
    from .train import add_data_args, add_schema_args
    add_schema_args(b)
    add_data_args(b)
    for name, text in (("info", "entries and size on disk"), ("clear", "delete the cache")):
        v = verbs.add_parser(name, help=text)
        v.add_argument("--cache-dir", metavar="DIR", help="the cache folder (default: data.cache_dir, "
                       "or model.feature_cache_dir with --features)")
        v.add_argument("--config", help="YAML/JSON config whose data.cache_dir (model.feature_cache_dir) to use")
        v.add_argument("--features", action="store_true",
                       help="the frozen towers' feature cache instead of the decode cache")


def run(args):
    from ..data.cache import DecodeCache
    if args.verb == "build":
        return build(args)
    if args.features:
        return features(args)
    cache = DecodeCache(_config(args.config, args.cache_dir).data.cache_dir)
    if args.verb == "clear":
        print(f"cleared {cache.folder}: {cache.clear() / 1e6:.1f} MB freed")
        return
    info = cache.info()
    print(f"{info['folder']}: {info['items']} decoded cells, {info['files']} files known, "
          f"{info['bytes'] / 1e6:.1f} MB on disk")
    for proc, v in info["by_processor"].items():
        print(f"  {proc}: {v['items']} cells, {v['bytes'] / 1e6:.1f} MB")


def features(args):
    """info / clear of the feature cache: one folder per frozen tower (encoders/feature_cache.py)."""
    from pathlib import Path

    from ..encoders.feature_cache import cache_info, clear_cache
    root = args.cache_dir or _config(args.config, None).model.feature_cache_dir
    if args.verb == "clear":
        print(f"cleared {Path(root).expanduser()}: {clear_cache(root) / 1e6:.1f} MB freed")
        return
    info = cache_info(root)
    print(f"{info['folder']}: {info['entries']} cached tower outputs, {info['bytes'] / 1e6:.1f} MB on disk, "
          f"{len(info['encoders'])} tower(s)")
    for name, v in info["encoders"].items():
        print(f"  {name}: {v['entries']} entries, {v['bytes'] / 1e6:.1f} MB")


def _config(path: str | None, cache_dir: str | None, size: str | None = None):
    """The config file (or the defaults) with the flags given on top."""
    from ..config import Config, read_config_file
    cfg = Config.from_dict(read_config_file(path) if path else {})
    return cfg.merged({"model": {"size": size}, "data": {"cache_dir": cache_dir}})


def build(args):
    import dataclasses

    from ..data.cache import DecodeCache
    from ..data.dataset import encode_table
    from ..data.manifest import read_table, resolve_schema
    from ..data.processors import Processors
    from ..runfolder import RunFolder
    from .train import data_overrides
    data = {k: v for k, v in data_overrides(args).items() if v is not None}
    table = read_table(args.table)
    if args.run:
        cfg = RunFolder(args.run).config.merged({"data": data})
        processors = RunFolder(args.run).processors(cfg)
    else:
        cfg = _config(args.config, args.cache_dir, args.size).merged({"data": data, "schema": {"text": args.text, "image": args.image,
                                                             "audio": args.audio}})
        schema = resolve_schema(table, dataclasses.replace(cfg.schema, label=None, task=None))
        cfg = dataclasses.replace(cfg, schema=schema)
        processors = Processors.build(cfg, schema).fit(table)
    before = DecodeCache(cfg.data.cache_dir).info()["items"]
    t0 = time.perf_counter()
    got = encode_table(table, processors, None, args.on_bad_row, progress=True, desc="caching")
    seconds = time.perf_counter() - t0
    after = DecodeCache(cfg.data.cache_dir).info()
    print(f"{len(got)} rows in the cache ({after['items'] - before} cells decoded now, the rest already there), "
          f"{len(got.skipped)} skipped, {seconds:.1f} s; {after['folder']}: {after['bytes'] / 1e6:.1f} MB")
    for s in got.skipped[:10]:
        print(f"  row {s['row']} column '{s['column']}' {s['file']}: {s['reason']}")
