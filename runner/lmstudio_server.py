"""Which LM Studio server a command talks to, and whether the bearer token may go there.

The one place that decides where the server is (`--base-url`, `LMFLOW_BASE_URL`, the
workflow's `lmstudio.base_url`, the default) and the token trust rule: the token goes only
to a URL the user chose outside the file, to loopback, or to a host listed in
`LMFLOW_TRUSTED_HOSTS` (docs/lmstudio.md, "Which server gets the token"). Hosts are read
with httpx's own URL parser, so the decision and the requests agree on what a URL means.
"""

from __future__ import annotations

import ipaddress
import os
from dataclasses import dataclass, field
from urllib.parse import urlsplit

import httpx

from .errors import ConfigurationError
from .runlog import mask_url_password
from .spec.model import DEFAULT_BASE_URL, DEFAULT_TOKEN_ENV, LMStudioSettings

BASE_URL_ENV = "LMFLOW_BASE_URL"
TRUSTED_HOSTS_ENV = "LMFLOW_TRUSTED_HOSTS"
WORKFLOW_ORIGIN = "lmstudio.base_url"


def base_url_candidates(
    cli_value: str | None, workflow_value: str | None = None
) -> tuple[tuple[str | None, str], ...]:
    """Where a base URL may come from, by precedence: (value or None, origin)."""
    return (
        (cli_value, "--base-url"),
        (os.environ.get(BASE_URL_ENV), BASE_URL_ENV),
        (workflow_value, WORKFLOW_ORIGIN),
    )


def _chosen_base_url(cli_value: str | None, workflow_value: str | None) -> tuple[str, str]:
    """The normalized base URL and where it came from (the default counts as the user's)."""
    for value, origin in base_url_candidates(cli_value, workflow_value):
        if value and value.strip():
            return _normalize_url(value.strip(), origin), origin
    return DEFAULT_BASE_URL, "default"


def resolve_base_url(cli_value: str | None, workflow_value: str | None = None) -> str:
    """`--base-url`, then `LMFLOW_BASE_URL`, then the workflow's `lmstudio.base_url`, then
    http://localhost:1234 — normalized (no trailing slash, no trailing `/v1`)."""
    return _chosen_base_url(cli_value, workflow_value)[0]


def _normalize_url(url: str, origin: str) -> str:
    shown = mask_url_password(url)
    try:
        parts = urlsplit(url)
        parts.port  # noqa: B018 -- raises ValueError for a port out of range or not a number
        # The trust decision and the requests read the URL as httpx does: both parsers agree.
        httpx.URL(url).host  # noqa: B018 -- decodes the host (IDNA), which may fail
    except (ValueError, httpx.InvalidURL) as error:
        raise ConfigurationError(
            f"{origin} is not a valid URL: {shown!r} ({error})",
            hint=f"for example {DEFAULT_BASE_URL}",
        ) from None
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise ConfigurationError(
            f"{origin} must be an http:// or https:// URL, not {shown!r}",
            hint=f"for example {DEFAULT_BASE_URL}",
        )
    url = url.rstrip("/")
    # People paste the OpenAI base URL (`.../v1`); the client adds the API paths itself.
    return url.removesuffix("/v1").rstrip("/")


@dataclass(frozen=True)
class WithheldToken:
    """Why the bearer token was not sent, and how the user can allow it."""

    message: str
    hint: str


@dataclass(frozen=True)
class ServerConfig:
    """Everything needed to reach one server. Token and URL password are kept out of the
    repr; `base_url` never holds a password (it is shown in messages and keys the cache)."""

    base_url: str = DEFAULT_BASE_URL
    token: str | None = field(default=None, repr=False)
    token_env: str = DEFAULT_TOKEN_ENV
    timeout: float | None = None
    credentials: tuple[str, str] | None = field(default=None, repr=False)
    withheld: WithheldToken | None = None


def resolve_server(
    cli_base_url: str | None = None, settings: LMStudioSettings | None = None
) -> ServerConfig:
    """The server a command talks to: base URL by precedence, token from `settings.token_env`.

    The trust model (docs/lmstudio.md): a workflow file alone never sends a secret to a host
    the user did not choose. The token goes to a URL the user gave (`--base-url`,
    `LMFLOW_BASE_URL`, the default), to this machine, or to a host in `LMFLOW_TRUSTED_HOSTS`;
    a file that names any other server gets no token, and `withheld` says why.
    """
    settings = settings or LMStudioSettings()
    base_url, origin = _chosen_base_url(cli_base_url, settings.base_url)
    base_url, credentials = _split_credentials(base_url)
    token = os.environ.get(settings.token_env) or None
    withheld = None
    if token is not None and origin == WORKFLOW_ORIGIN and not may_receive_token(base_url):
        token, withheld = None, _withheld(base_url, settings.token_env)
    return ServerConfig(
        base_url=base_url,
        token=token,
        token_env=settings.token_env,
        timeout=settings.timeout,
        credentials=credentials,
        withheld=withheld,
    )


def _split_credentials(url: str) -> tuple[str, tuple[str, str] | None]:
    """`http://user:pw@host` -> (`http://host`, (user, pw)): the client sends them as Basic
    auth, as httpx would, and the URL it shows and caches holds no password."""
    parsed = httpx.URL(url)
    if not parsed.userinfo:
        return url, None
    return str(parsed.copy_with(userinfo=b"")), (parsed.username, parsed.password)


def _withheld(base_url: str, token_env: str) -> WithheldToken:
    host = httpx.URL(base_url).netloc.decode("ascii")
    return WithheldToken(
        f"the token in ${token_env} is not sent to {base_url}: lmstudio.base_url in the "
        "workflow file chose that server, and it is not on this machine",
        f"if you trust that server, choose it yourself: --base-url {base_url}, "
        f"LMFLOW_BASE_URL={base_url}, or add {host} to {TRUSTED_HOSTS_ENV}",
    )


def _host_and_port(url: str) -> tuple[str, int] | None:
    """Host (lowercase, IPv6 without brackets) and port, as httpx connects to them."""
    try:
        parsed = httpx.URL(url)
        return parsed.host, parsed.port or _DEFAULT_PORTS.get(parsed.scheme, 0)
    except (httpx.InvalidURL, ValueError):  # `.host` decodes IDNA, whose errors are ValueErrors
        return None


_DEFAULT_PORTS = {"http": 80, "https": 443}


def _is_loopback_host(host: str) -> bool:
    """Exactly `localhost` or a loopback address: `localhost.` or `localhost.example.com`
    resolve through DNS, so they are not this machine."""
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def is_loopback(url: str) -> bool:
    """Whether `url` points at this machine (where `lms` describes the same LM Studio)."""
    found = _host_and_port(url)
    return found is not None and _is_loopback_host(found[0])


def trusted_hosts(value: str | None = None) -> list[tuple[str, int | None]]:
    """`LMFLOW_TRUSTED_HOSTS` (or `value`): hosts, with an optional port, separated by commas
    or spaces, e.g. `gpu-box.lan:1234, 10.0.0.5, [fd00::5]`. A host without a port is
    trusted on every port."""
    text = os.environ.get(TRUSTED_HOSTS_ENV, "") if value is None else value
    hosts = []
    for entry in text.replace(",", " ").split():
        try:
            parsed = httpx.URL(f"http://{entry}")
            host = parsed.host
            port = urlsplit(f"http://{entry}").port  # as written: httpx drops a :80
        except (httpx.InvalidURL, ValueError):
            host = ""
        if not host or parsed.userinfo or parsed.raw_path != b"/":
            raise ConfigurationError(
                f"{TRUSTED_HOSTS_ENV} holds {entry!r}, which is not a host",
                hint=f"list hosts, optionally with a port: {TRUSTED_HOSTS_ENV}=gpu-box.lan:1234",
            )
        hosts.append((host, port))
    return hosts


def may_receive_token(url: str, trusted: str | None = None) -> bool:
    """Whether a server a workflow file chose may get the bearer token: one on this machine,
    or one whose host (and port, if the entry gives one) the user listed in
    `LMFLOW_TRUSTED_HOSTS` (`trusted` overrides the variable)."""
    found = _host_and_port(url)
    if found is None:
        return False
    host, port = found
    return _is_loopback_host(host) or any(
        host == allowed and allowed_port in (None, port)
        for allowed, allowed_port in trusted_hosts(trusted)
    )
