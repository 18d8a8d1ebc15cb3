"""Command lines made from config dataclasses: one field, one documented option."""

import argparse
import dataclasses
from dataclasses import field


def option(default, help: str):
    """A config field that is also a documented command-line option."""
    return field(default=default, metadata={"help": help})


def config_parser(config_class, prog: str, description: str, choices: dict | None = None) -> argparse.ArgumentParser:
    """A parser with one `--field-name` option per field of `config_class`, typed by its default."""
    parser = argparse.ArgumentParser(prog=prog, description=description)
    for f in dataclasses.fields(config_class):
        parser.add_argument(f"--{f.name.replace('_', '-')}", type=type(f.default), default=f.default, help=f.metadata["help"],
                            choices=(choices or {}).get(f.name))
    return parser
