"""`lmflow auth`: log in to a remote MCP server once; runs then use the stored token."""

from __future__ import annotations

from pathlib import Path

import click

from ..spec import load_workflow
from . import _options as options


@click.command("auth")
@click.argument("server")
@click.argument("workflow_file", required=False, type=click.Path(path_type=Path, dir_okay=False))
@options.inputs
def command(
    server: str, workflow_file: Path | None, pairs: tuple[str, ...], inputs_file: Path | None
) -> int:
    """Log in to SERVER, an MCP server of WORKFLOW_FILE with `oauth:` settings (or, without
    a workflow, a server URL), and keep its token for later runs.

    Prints the login URL and opens it in a browser (LMFLOW_BROWSER names a command to open
    it with instead), then waits on a 127.0.0.1 port for the browser to come back. The
    token is kept in $XDG_CONFIG_HOME/lmflow/tokens/ (else ~/.config/lmflow/tokens/),
    readable by you alone, and refreshed by runs when it expires. A server with the client
    credentials grant needs no login; this checks that its credentials work.
    """
    from .. import signals
    from ..auth import log_in, server_to_log_in
    from ..runtime import read_inputs

    workflow = load_workflow(workflow_file) if workflow_file is not None else None
    target, redactor = server_to_log_in(server, workflow, read_inputs(inputs_file, pairs))

    def show(url: str, opened: bool) -> None:
        if opened:
            click.echo(f"Log in to {target.name} in the browser that opens, or open:", err=True)
        else:
            click.echo(
                f"Open this URL in a browser on this machine to log in to {target.name}:", err=True
            )
        click.echo(f"  {url}", err=True)

    done = signals.run(log_in(target, workflow=workflow_file, show=show, redactor=redactor))
    click.echo(
        f"Logged in to {done.server} ({done.url}): {done.tools} tools; "
        f"token kept in {done.token_file}"
    )
    return 0
