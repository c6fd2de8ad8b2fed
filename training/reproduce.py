"""Reproduce a shipped model from its recipe: every stage in order, ending with an exported diffusers folder.

    python -m training.reproduce shapes-unet --out runs/shapes-unet            # VAE, UNet, export: runs/shapes-unet/model
    python -m training.reproduce shapes-mmdit --out runs/shapes-mmdit          # on the shipped UNet's VAE and text encoder
    python -m training.reproduce shapes-mmdit --out runs/shapes-mmdit --input unet=runs/shapes-unet/model
    python -m training.reproduce shapes-unet --out /tmp/smoke --smoke          # the whole path at a few steps, in seconds
    python -m training.reproduce shapes-unet --out runs/shapes-unet --dry-run  # print the stages' commands only

A recipe is a JSON file in ``training/recipes/`` (format: ``training/README.md``); a path to
another JSON file works too. Every stage's arguments are checked before the first stage runs.
Training stages resume from their checkpoints, so after an interruption the same command
continues where the run stopped. ``OUT/reproduce.json`` records the commands that were run.
"""

from __future__ import annotations

import argparse
import importlib
import json
import shlex
from pathlib import Path

from attnscope.pipelines import WEIGHTS

from .errors import ArgumentParser, TrainingError, run_command

RECIPES = Path(__file__).parent / "recipes"
#: the modules a stage's command may name (each has parse_args and run)
COMMANDS = ("train", "text_identity", "train_mmdit", "export")
RECIPE_KEYS = {"name", "summary", "inputs", "output", "notes", "stages"}
STAGE_KEYS = {"name", "command", "args", "smoke"}


def recipe_names() -> list[str]:
    """Names of the recipes in ``training/recipes``."""
    return sorted(path.stem for path in RECIPES.glob("*.json"))


def load_recipe(name: str | Path) -> dict:
    """A recipe by name (``"shapes-unet"``) or by path to a JSON file, checked for its keys."""
    path = Path(name) if str(name).endswith(".json") else RECIPES / f"{name}.json"
    if not path.is_file():
        raise TrainingError(f"No recipe {name!r}; pass one of {', '.join(recipe_names())} or a path to a recipe .json file.")
    try:
        recipe = json.loads(path.read_text())
    except json.JSONDecodeError as error:
        raise TrainingError(f"{path} is not valid JSON ({error}); fix the file.") from None
    unknown = set(recipe) - RECIPE_KEYS
    if unknown or not isinstance(recipe.get("stages"), list) or not recipe["stages"]:
        raise TrainingError(f"{path} needs a non-empty 'stages' list and only the keys {', '.join(sorted(RECIPE_KEYS))} "
                            f"(unknown: {', '.join(sorted(unknown)) or 'none'}).")
    for stage in recipe["stages"]:
        bad = set(stage) - STAGE_KEYS
        command = stage.get("command")
        if bad or not isinstance(command, list) or not command or command[0] not in COMMANDS:
            raise TrainingError(f"Stage {stage.get('name', '?')!r} of {path} needs a 'command' starting with one of "
                                f"{', '.join(COMMANDS)} and only the keys {', '.join(sorted(STAGE_KEYS))}.")
    return recipe


def _fill(text: str, values: dict) -> str:
    try:
        return text.format_map(values)
    except (KeyError, ValueError) as error:
        raise TrainingError(f"Unknown placeholder {error} in {text!r}; a recipe may use "
                            f"{', '.join('{' + k + '}' for k in values)}.") from None


def stage_argv(stage: dict, values: dict, smoke: bool = False) -> list[str]:
    """The command-line arguments of ``stage`` (after its command), placeholders filled in.

    An argument's value may be a string or number, ``true`` (a bare flag), ``null`` (left out) or a
    list (the flag repeated once per item). ``smoke`` applies the stage's ``smoke`` overrides.

    >>> stage_argv({"command": ["train", "vae"], "args": {"--out": "{out}/vae", "--steps": 1155}, "smoke": {"--steps": 1}},
    ...            {"out": "runs/x"}, smoke=True)
    ['vae', '--out', 'runs/x/vae', '--steps', '1']
    """
    args = dict(stage.get("args", {}))
    if smoke:
        args.update(stage.get("smoke", {}))
    argv = [_fill(str(part), values) for part in stage["command"][1:]]
    for flag, value in args.items():
        if value is None or value is False:
            continue
        if value is True:
            argv.append(flag)
            continue
        for item in value if isinstance(value, list) else [value]:
            argv += [flag, _fill(str(item), values)]
    return argv


def plan(recipe: dict, out: Path, inputs: dict | None = None, smoke: bool = False) -> tuple[list, dict]:
    """``(stage, argv)`` for every stage of ``recipe`` written under ``out``, and the placeholder values;
    ``inputs`` overrides the recipe's named input folders (``{"unet": "runs/shapes-unet/model"}``)."""
    values = {"out": str(out), "weights": str(WEIGHTS)}
    declared = recipe.get("inputs", {})
    unknown = set(inputs or {}) - set(declared)
    if unknown:
        raise TrainingError(f"{recipe.get('name', 'This recipe')} has no input {', '.join(sorted(unknown))}; "
                            f"its inputs: {', '.join(declared) or 'none'}.")
    for name, default in declared.items():
        values[name] = str((inputs or {}).get(name) or _fill(default, values))
    return [(stage, stage_argv(stage, values, smoke)) for stage in recipe["stages"]], values


def command_line(stage: dict, argv: list[str]) -> str:
    """The shell command that runs one stage by hand."""
    return shlex.join(["python", "-m", f"training.{stage['command'][0]}"] + argv)


def reproduce(recipe: dict, out: Path, inputs: dict | None = None, smoke: bool = False, dry_run: bool = False) -> Path:
    """Run every stage of ``recipe`` in order; returns the exported model folder (the recipe's ``output``)."""
    stages, values = plan(recipe, out, inputs, smoke)
    parsed = []
    for stage, argv in stages:  # every stage's arguments are checked before anything runs
        module = importlib.import_module(f"{__package__}.{stage['command'][0]}")
        try:
            parsed.append((module, module.parse_args(argv)))
        except TrainingError as error:
            raise TrainingError(f"stage {stage['name']!r} of {recipe.get('name')}: {error}") from None
    lines = [command_line(stage, argv) for stage, argv in stages]
    output = Path(_fill(recipe.get("output", "{out}"), values))
    if dry_run:
        print("\n".join(lines), flush=True)
        return output
    out.mkdir(parents=True, exist_ok=True)
    record = {"recipe": recipe.get("name"), "smoke": smoke, "inputs": {k: values[k] for k in recipe.get("inputs", {})},
              "commands": lines}
    (out / "reproduce.json").write_text(json.dumps(record, indent=1))
    for (stage, _), line, (module, args) in zip(stages, lines, parsed):
        print(f"== {stage['name']}: {line}", flush=True)
        module.run(args)
    print(f"{recipe.get('name')}: {output}", flush=True)
    return output


def _input(text: str) -> tuple[str, str]:
    name, _, folder = text.partition("=")
    if not name or not folder:
        raise argparse.ArgumentTypeError(f"expected NAME=FOLDER, e.g. unet=runs/shapes-unet/model, not {text!r}")
    return name, folder


def parse_args(argv=None):
    """The arguments of ``python -m training.reproduce``; raises :class:`TrainingError` on a usage error."""
    parser = ArgumentParser(prog="python -m training.reproduce", description=__doc__,
                            formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("recipe", help=f"a recipe name ({', '.join(recipe_names())}) or a recipe .json file")
    parser.add_argument("--out", type=Path, required=True, help="folder for every stage's run folder and the exported model")
    parser.add_argument("--smoke", action="store_true",
                        help="apply each stage's smoke overrides (a few steps, a tiny bank and batch): the whole path in seconds")
    parser.add_argument("--input", type=_input, action="append", default=[], metavar="NAME=FOLDER",
                        help="replace one of the recipe's input folders (shapes-mmdit: unet, the shipped shapes-unet by default)")
    parser.add_argument("--dry-run", action="store_true", help="check the recipe and print the stages' commands; run nothing")
    return parser.parse_args(argv)


def run(args) -> Path:
    return reproduce(load_recipe(args.recipe), args.out, dict(args.input), args.smoke, args.dry_run)


def main(argv=None) -> None:
    run_command(run, parse_args, argv)


if __name__ == "__main__":
    main()
