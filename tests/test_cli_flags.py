"""Command-line flags come from the config dataclasses: every field is a flag, the old
flag names keep their meanings, defaults show in --help."""

from __future__ import annotations

import dataclasses

import pytest

from aimv2.bench.command import BENCH_FLAGS
from aimv2.bench.plan import Config as BenchConfig
from aimv2.cli import build_parser
from aimv2.cli.evaluate import PROBE_FLAGS
from aimv2.cli.train import PRETRAIN_FLAGS
from aimv2.flags import add_config_flags, config_from_args, flag_name
from aimv2.probe import ProbeConfig
from aimv2.training import PretrainConfig


def _subparser(name):
    parser = build_parser()
    return parser._subparsers._group_actions[0].choices[name]


@pytest.mark.parametrize(
    "command, cls, table",
    [
        ("pretrain", PretrainConfig, PRETRAIN_FLAGS),
        ("probe", ProbeConfig, PROBE_FLAGS),
        ("bench", BenchConfig, BENCH_FLAGS),
    ],
)
def test_every_config_field_is_a_flag_with_its_default_shown(command, cls, table):
    sub = _subparser(command)
    options = {o: a for a in sub._actions for o in a.option_strings}
    text = sub.format_help()
    assert set(table) <= {f.name for f in dataclasses.fields(cls)}  # the table names fields
    for f in dataclasses.fields(cls):
        if f.name in table and table[f.name].skip:
            continue
        name = table[f.name].name if f.name in table and table[f.name].name else flag_name(f.name)
        assert name in options, f"{cls.__name__}.{f.name} has no flag"
        assert options[name].dest == f.name
    shown = {"pretrain": "(default: 300)", "probe": "(default: 100)", "bench": "(default: 2048)"}
    assert shown[command] in text


def test_pretrain_flags_keep_their_names_and_meanings():
    args = build_parser().parse_args(
        ["pretrain", "--out", "o", "--workers", "5", "--quiet", "--no-hflip"]
        + ["--crop-scale-min", "0.6", "--clip-norm", "0", "--spec", "aimv2-test-tiny"]
    )
    cfg = config_from_args(PretrainConfig, args, PRETRAIN_FLAGS)
    assert (cfg.num_workers, cfg.progress, cfg.hflip) == (5, False, False)
    assert cfg.crop_scale == (0.6, 1.0) and cfg.clip_norm is None
    assert cfg.spec.encoder.width == 32
    defaults = build_parser().parse_args(["pretrain", "--out", "o"])
    cfg = config_from_args(PretrainConfig, defaults, PRETRAIN_FLAGS)
    assert cfg == PretrainConfig(out="o")


def test_a_new_config_field_becomes_a_flag_without_a_second_edit():
    import argparse

    @dataclasses.dataclass
    class Extended(PretrainConfig):
        caption_dropout: float = dataclasses.field(default=0.0, metadata={"help": "drop captions"})

    parser = argparse.ArgumentParser()
    add_config_flags(parser, Extended, PRETRAIN_FLAGS)
    cfg = config_from_args(
        Extended, parser.parse_args(["--out", "o", "--caption-dropout", "0.25"]), PRETRAIN_FLAGS
    )
    assert cfg.caption_dropout == 0.25 and "drop captions (default: 0.0)" in parser.format_help()


def test_bench_flags_keep_their_names_and_repeat():
    from aimv2.bench.command import _cmd_bench  # noqa: F401 - the command these feed

    args = build_parser().parse_args(
        ["bench", "--mode", "forward", "--mode", "data", "--workers", "1", "--workers", "2"]
        + ["--no-tune-alloc", "--precision", "bf16", "--batch-size", "8"]
    )
    assert args.modes == ["forward", "data"] and args.workers == [1, 2]
    assert (args.tune_alloc, args.precision, args.batch_size) == (False, "bf16", 8)
    plain = build_parser().parse_args(["bench"])
    assert plain.modes is None and plain.workers is None  # the Config defaults apply
    assert plain.matmul_size == BenchConfig().matmul_size and plain.tune_alloc is True
