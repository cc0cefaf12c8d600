"""The `tinyvla` command line: one thin module per verb, wired here.

Every verb module keeps its heavy imports (torch, transformers, the simulator) inside its function, so `tinyvla --help`
is instant. `main()` turns a `UserError` into one red line on stderr and exit code 2 — never a traceback.
"""

from __future__ import annotations

import sys

import typer

from tinyvla import __version__
from tinyvla.errors import UserError

app = typer.Typer(
    name="tinyvla",
    help="Fine-tune a vision-language model into a robot policy that writes its actions as text (VLA-0).",
    no_args_is_help=True,
    add_completion=False,
    rich_markup_mode="rich",
    pretty_exceptions_enable=False,
)


def _version(value: bool):
    if value:
        typer.echo(f"tinyvla {__version__}")
        raise typer.Exit()


@app.callback()
def _root(
    version: bool = typer.Option(False, "--version", callback=_version, is_eager=True, help="Print the version."),
):
    """Fine-tune a vision-language model into a robot policy that writes its actions as text (VLA-0)."""


def _register():
    from tinyvla.cli import bench, data, doctor, evaluate, export, import_, inspect_tokens, train

    app.add_typer(data.app, name="data", help="Datasets: stats and BlockFind generation. [dim]e.g. tinyvla data stats --repo physical-intelligence/libero[/dim]")
    app.command("train", help="Train a policy from a YAML recipe. [dim]e.g. tinyvla train recipes/tiny-cpu.yaml[/dim]")(train.train)
    app.command("eval", help="Closed-loop success in BlockFind or LIBERO. [dim]e.g. tinyvla eval runs/tiny-cpu/final --suite blockfind-reach[/dim]")(evaluate.evaluate)
    app.command("export", help="Write a self-contained policy directory. [dim]e.g. tinyvla export runs/tiny-cpu/final --out policies/tiny[/dim]")(export.export)
    app.add_typer(import_.app, name="import", help="Convert a checkpoint trained elsewhere. [dim]e.g. tinyvla import vla0 runs/vla0 --out policies/vla0[/dim]")
    app.command("inspect-tokens", help="Show exactly what the model reads and writes. [dim]e.g. tinyvla inspect-tokens --tokenizer qwen[/dim]")(inspect_tokens.inspect_tokens)
    app.command("bench", help="Training and inference speed, side by side. [dim]e.g. tinyvla bench recipes/tiny-cpu.yaml --compare spec,greedy[/dim]")(bench.bench)
    app.command("doctor", help="Check torch, GPU, attention kernels, simulator; estimate training time. [dim]e.g. tinyvla doctor recipes/tiny-cpu.yaml[/dim]")(doctor.doctor)


_register()


def _click_exception_types() -> tuple:
    types = []
    for module in ("click.exceptions", "typer._click.exceptions"):
        try:
            types.append(__import__(module, fromlist=["ClickException"]).ClickException)
        except (ImportError, AttributeError):
            pass
    return tuple(types)


def main(argv: list[str] | None = None) -> int:
    try:
        app(args=argv, standalone_mode=False)
    except UserError as err:
        typer.secho(f"error: {err}", fg="red", err=True)
        return UserError.exit_code
    except typer.Exit as exit_:
        return exit_.exit_code
    except typer.Abort:
        typer.secho("aborted", fg="red", err=True)
        return 130
    except KeyboardInterrupt:
        typer.secho("interrupted", fg="red", err=True)
        return 130
    except Exception as err:
        # click's own usage errors (unknown option, missing argument) arrive here in non-standalone mode. Newer typer
        # releases vendor click as typer._click, whose exception classes are not click's.
        if isinstance(err, _click_exception_types()):
            err.show()
            return err.exit_code
        raise
    return 0


def entrypoint():  # pragma: no cover - the console script
    sys.exit(main())


if __name__ == "__main__":  # pragma: no cover
    entrypoint()
