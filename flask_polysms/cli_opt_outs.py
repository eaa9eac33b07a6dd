"""``flask polysms opt-outs export|import FILE.csv``: opt-outs in and out as CSV files
(``user_number,sender,keyword,created_at``; :mod:`flask_polysms.services.opt_out_files`)."""

from __future__ import annotations

import click
from flask import current_app
from flask.cli import AppGroup

from .services import opt_out_files
from .services.state import get_state

opt_outs_cli = AppGroup("opt-outs", help="Opt-outs as CSV files: export and import.")

_PROJECT_HELP = "only this project's opt-outs (default: every project's)"


def _state():
    return get_state(current_app._get_current_object())


@opt_outs_cli.command("export")
@click.argument("path", metavar="FILE.csv", type=click.Path(dir_okay=False, allow_dash=True))
@click.option("--project", "project_id", metavar="PROJECT_ID", default=None, help=_PROJECT_HELP)
def export_command(path: str, project_id: str | None) -> None:
    """Write the current opt-outs to FILE.csv (- for standard output)."""
    if path == "-":
        opt_out_files.export_csv(_state(), project_id, click.get_text_stream("stdout"))
        return
    # newline="": the csv module writes its own line ends (and quotes newlines inside fields).
    with open(path, "w", encoding="utf-8", newline="") as out:
        count = opt_out_files.export_csv(_state(), project_id, out)
    click.echo(f"{count} opt-out(s) written to {path}")


@opt_outs_cli.command("import")
@click.argument("path", metavar="FILE.csv", type=click.Path(dir_okay=False, allow_dash=True))
@click.option(
    "--project",
    "project_id",
    metavar="PROJECT_ID",
    default=None,
    help="every sender must be this project's (default: each row goes to its sender's project)",
)
def import_command(path: str, project_id: str | None) -> None:
    """Record the opt-outs of FILE.csv (source import), all or none: a bad row is reported with
    its line number and nothing is imported. Rows already opted out change nothing."""
    try:
        if path == "-":
            result = opt_out_files.import_csv(_state(), click.get_text_stream("stdin"), project_id)
        else:
            # utf-8-sig: spreadsheet programs start their CSV files with a byte order mark.
            with open(path, encoding="utf-8-sig", newline="") as lines:
                result = opt_out_files.import_csv(_state(), lines, project_id)
    except OSError as exc:
        raise click.ClickException(f"cannot read {path}: {exc.strerror}") from exc
    except UnicodeDecodeError as exc:
        raise click.ClickException(
            f"{path} is not UTF-8 text ({exc.reason}); nothing imported"
        ) from exc
    except opt_out_files.ImportProblems as exc:
        for line, why in exc.problems:
            click.echo(f"{path}:{line}: {why}", err=True)
        raise click.ClickException(
            f"{len(exc.problems)} bad row(s) in {path}: nothing imported"
        ) from exc
    click.echo(f"{result.applied} opt-out(s) imported, {result.unchanged} already opted out")
