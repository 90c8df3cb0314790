"""OAuth for remote MCP servers, through the `mcp` SDK's OAuth client.

The SDK does the protocol: protected resource and authorization server metadata discovery
(with the OpenID Connect fallback), dynamic client registration, PKCE, the token exchange,
refreshing and the client credentials grant. This module gives it what is lmflow's:

- `TokenFile`: the SDK's `TokenStorage`, one JSON file per server URL in the user's config
  directory (`$XDG_CONFIG_HOME/lmflow/tokens/`, else `~/.config/lmflow/tokens/`), created
  0600 in a 0700 directory, holding the tokens, when they expire, and the registered client.
- `LoopbackLogin`: the browser half of `lmflow auth`: it shows the authorization URL, opens
  a browser (`LMFLOW_BROWSER` names a command to use instead; tests set it), and waits on a
  127.0.0.1 listener for the redirect that carries the code and the expected `state`.
- `http_auth`: the httpx auth of one server. In a run there is no `LoopbackLogin`: a server
  that needs a login and has no usable token fails at once (`LoginRequired`) with the fix,
  instead of waiting for a browser nobody watches.

Every token and client secret read or written is handed to `OAuthRun.on_secret` (the run
log's redactor), so none reaches a log, a cassette, a report or an error message.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import shlex
import subprocess
import threading
import warnings
import webbrowser
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from types import TracebackType
from typing import Any
from urllib.parse import parse_qs, urlsplit

import anyio
import httpx2
from anyio.abc import SocketStream
from anyio.streams.memory import MemoryObjectSendStream
from mcp.client.auth import AuthorizationCodeResult, OAuthClientProvider
from mcp.client.auth.extensions.client_credentials import (
    ClientCredentialsOAuthProvider,
    PrivateKeyJWTOAuthProvider,
    SignedJWTParameters,
)
from mcp.shared.auth import OAuthClientInformationFull, OAuthClientMetadata, OAuthToken
from mcp.shared.auth_utils import calculate_token_expiry
from pydantic import ValidationError

from .spec.model import HttpServer, OAuth

BROWSER_VARIABLE = "LMFLOW_BROWSER"
"""A command to open the login URL with (the URL is its last argument) instead of the
system's browser: for tests and for headless machines with a browser elsewhere."""
CALLBACK_PATH = "/callback"
_UNUSED_REDIRECT = "http://127.0.0.1/callback"
"""The redirect URI a run declares: it never sends anyone to it (see `_refusal`)."""
_MAX_REQUEST_BYTES = 65536
_BROWSER_GRACE = 5.0
"""Seconds a finished login gives the `LMFLOW_BROWSER` command to exit."""


class LoginRequired(Exception):
    """A server wants a login that a run cannot do: no usable token is stored, or a
    variable the client's settings name is not set. `fix` says what to do."""

    def __init__(self, message: str, fix: str) -> None:
        super().__init__(message)
        self.fix = fix


class LoginFailed(Exception):
    """`lmflow auth` did not get a code: a timeout, or the authorization server said no."""


def tokens_dir() -> Path:
    config = os.environ.get("XDG_CONFIG_HOME") or str(Path.home() / ".config")
    return Path(config) / "lmflow" / "tokens"


def token_path(url: str) -> Path:
    """The token file of a server URL: its host for people, a hash of the URL for uniqueness."""
    host = re.sub(r"[^A-Za-z0-9.-]+", "_", urlsplit(url).netloc) or "server"
    return tokens_dir() / f"{host}-{hashlib.sha256(url.encode()).hexdigest()[:16]}.json"


class TokenFile:
    """The SDK's `TokenStorage` for one server URL, in `token_path(url)`.

    `client` is a pre-registered client (from the environment): when given it is the client,
    and a registration is never written. `on_secret` is told every secret read or written.
    """

    def __init__(
        self,
        url: str,
        *,
        client: OAuthClientInformationFull | None = None,
        on_secret: Callable[[str], None],
    ) -> None:
        self.url = url
        self.path = token_path(url)
        self._client = client
        self._on_secret = on_secret

    async def get_tokens(self) -> OAuthToken | None:
        return self._model(OAuthToken, "tokens")

    async def set_tokens(self, tokens: OAuthToken) -> None:
        expires_at = calculate_token_expiry(tokens.expires_in)
        self._write(tokens=tokens.model_dump(mode="json", exclude_none=True), expires_at=expires_at)
        self._tell(tokens.access_token, tokens.refresh_token)

    async def get_client_info(self) -> OAuthClientInformationFull | None:
        if self._client is not None:
            return self._client
        return self._model(OAuthClientInformationFull, "client")

    async def set_client_info(self, client_info: OAuthClientInformationFull) -> None:
        if self._client is not None:
            return
        self._write(client=client_info.model_dump(mode="json", exclude_none=True))
        self._tell(client_info.client_secret)

    def expires_at(self) -> float | None:
        """When the stored access token expires (seconds since the epoch), if it said."""
        value = self._read().get("expires_at")
        return float(value) if isinstance(value, (int, float)) else None

    def has_tokens(self) -> bool:
        return isinstance(self._read().get("tokens"), dict)

    def forget_tokens(self) -> None:
        """Drop the tokens (a fresh login follows), keeping the registered client."""
        if self.has_tokens():
            self._write(tokens=None, expires_at=None)

    def _model(self, model: Any, key: str) -> Any:
        data = self._read().get(key)
        if not isinstance(data, dict):
            return None
        try:
            found = model.model_validate(data)
        except ValidationError:
            return None  # a file another version wrote: as good as none, a login replaces it
        for secret in ("access_token", "refresh_token", "client_secret"):
            self._tell(getattr(found, secret, None))
        return found

    def _tell(self, *secrets: str | None) -> None:
        for secret in secrets:
            if secret:
                self._on_secret(secret)

    def _read(self) -> dict[str, Any]:
        try:
            data = json.loads(self.path.read_text(encoding="utf-8"))
        except (OSError, ValueError):
            return {}
        return data if isinstance(data, dict) else {}

    def _write(self, **changes: Any) -> None:
        """Change some keys, atomically; the file is never readable by others, not even
        for a moment (created 0600 in a 0700 directory)."""
        data = {**self._read(), "server_url": self.url, **changes}
        data = {key: value for key, value in data.items() if value is not None}
        self.path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
        self.path.parent.chmod(0o700)
        partial = self.path.with_name(f".{self.path.name}.{os.getpid()}.tmp")
        fd = os.open(partial, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "w", encoding="utf-8") as file:
            json.dump(data, file, indent=2)
        os.replace(partial, self.path)


class _AuthorizationCode(OAuthClientProvider):
    """The SDK's provider, told when a token loaded from the file expires: the SDK alone
    would take a stored token for valid until the server refuses it, and then ask for a new
    login instead of refreshing."""

    def __init__(self, tokens: TokenFile, **kwargs: Any) -> None:
        super().__init__(storage=tokens, **kwargs)
        self._tokens = tokens

    async def _initialize(self) -> None:
        await super()._initialize()
        self.context.token_expiry_time = self._tokens.expires_at()


@dataclass
class OAuthRun:
    """What the OAuth of one command needs from it: the login for `lmflow auth` (None in a
    run: nobody is asked), where secrets go, and the workflow (for the fix in messages)."""

    workflow: Path | None = None
    login: LoopbackLogin | None = None
    on_secret: Callable[[str], None] = field(default=lambda secret: None)


def http_auth(name: str, server: HttpServer, run: OAuthRun) -> httpx2.Auth | None:
    """The httpx auth for a server: None without `oauth:`; raises `LoginRequired` for an
    authorization-code server with no stored token in a run, before any request."""
    settings = server.oauth
    if settings is None:
        return None
    given = _credentials(settings, run)
    if settings.grant == "client_credentials":
        return _client_credentials(server.url, settings, given, run)
    client = _preregistered(settings, given)
    tokens = TokenFile(server.url, client=client, on_secret=run.on_secret)
    if run.login is None and not tokens.has_tokens():
        raise LoginRequired(
            f"it needs an OAuth login and no token is stored for {server.url} ({tokens.path})",
            _login_command(name, run.workflow),
        )
    login = run.login
    metadata = OAuthClientMetadata(
        client_name="lmflow",
        redirect_uris=[login.redirect_uri if login else _UNUSED_REDIRECT],  # type: ignore[list-item]
        grant_types=["authorization_code", "refresh_token"],
        response_types=["code"],
        scope=settings.scope,
        # Without a pre-registered client the authorization server chooses as it registers.
        token_endpoint_auth_method=client.token_endpoint_auth_method if client else None,  # type: ignore[arg-type]
    )
    return _AuthorizationCode(
        tokens,
        server_url=server.url,
        client_metadata=metadata,
        redirect_handler=login.redirect if login else _refusal(name, server, run),
        callback_handler=login.callback if login else _no_callback,
    )


def _login_command(name: str, workflow: Path | None) -> str:
    where = f" {shlex.quote(str(workflow))}" if workflow is not None else " WORKFLOW"
    return f"run `lmflow auth {shlex.quote(name)}{where}` once to log in (it opens a browser)"


def _refusal(name: str, server: HttpServer, run: OAuthRun) -> Callable[[str], Any]:
    """The redirect handler of a run: the stored token was refused and could not be
    refreshed, and a run never waits for a browser."""

    async def refuse(url: str) -> None:
        raise LoginRequired(
            f"its OAuth token for {server.url} is no longer accepted and could not be refreshed",
            _login_command(name, run.workflow),
        )

    return refuse


async def _no_callback() -> AuthorizationCodeResult:
    raise AssertionError("a run never waits for a login")  # the redirect handler raised


_VARIABLES = {
    "client_id": "client_id_env",
    "client_secret": "client_secret_env",
    "client_key": "client_key_env",
}
"""Each credential and the setting that names its environment variable."""


def _credentials(settings: OAuth, run: OAuthRun) -> dict[str, str]:
    """The client id, secret and key the settings name, read from the environment; the
    secret and the key are told to `run.on_secret`."""
    given: dict[str, str] = {}
    for key, setting in _VARIABLES.items():
        variable = getattr(settings, setting)
        if variable is None:
            continue
        value = os.environ.get(variable)
        if not value:
            raise LoginRequired(
                f"its OAuth {key.replace('_', ' ')} is read from ${variable}, which is not set",
                f"export {variable} (the server's `oauth: {{{setting}: {variable}}}`)",
            )
        given[key] = value
        if key != "client_id":
            run.on_secret(value)
    return given


def _preregistered(settings: OAuth, given: dict[str, str]) -> OAuthClientInformationFull | None:
    """The pre-registered client of an authorization code login, if the settings name one."""
    if "client_id" not in given:
        return None
    return OAuthClientInformationFull(
        client_id=given["client_id"],
        client_secret=given.get("client_secret"),
        redirect_uris=None,
        grant_types=[settings.grant, "refresh_token"],
        token_endpoint_auth_method="client_secret_basic" if "client_secret" in given else "none",
        scope=settings.scope,
    )


def _client_credentials(
    url: str, settings: OAuth, given: dict[str, str], run: OAuthRun
) -> OAuthClientProvider:
    """The SDK's client credentials provider: the client authenticates with its secret
    (HTTP basic), or with a JWT it signs with its private key (`private_key_jwt`)."""
    tokens = TokenFile(url, on_secret=run.on_secret)
    client_id = given["client_id"]
    with warnings.catch_warnings():  # no `issuer:`: the SDK's deprecation is ours to doc
        warnings.simplefilter("ignore")
        if "client_key" in given:
            signer = SignedJWTParameters(
                issuer=client_id,
                subject=client_id,
                signing_key=given["client_key"],
                signing_algorithm=settings.key_algorithm,
            )
            return PrivateKeyJWTOAuthProvider(
                url,
                tokens,
                client_id,
                signer.create_assertion_provider(),
                scope=settings.scope,
                issuer=settings.issuer,
            )
        return ClientCredentialsOAuthProvider(
            url,
            tokens,
            client_id,
            given["client_secret"],
            scope=settings.scope,
            issuer=settings.issuer,
        )


class LoopbackLogin:
    """The browser half of an authorization code login, on a 127.0.0.1 port of its own.

    `async with LoopbackLogin(show, timeout) as login:` binds the listener, so
    `login.redirect_uri` is known before the client registers. `redirect` opens the
    authorization URL in a browser and shows it (`show(url, opened)`, `opened` False when no
    browser could be started); `callback` waits up to `timeout`
    seconds for a request to `/callback` that carries the `state` of that URL, answering
    any other request with an error and waiting on.
    """

    def __init__(self, show: Callable[[str, bool], None], timeout: float) -> None:
        self._show = show
        self._timeout = timeout
        self._state: str | None = None
        self._listener: Any = None
        self._opened: subprocess.Popen[bytes] | None = None
        self.redirect_uri = ""

    async def __aenter__(self) -> LoopbackLogin:
        self._listener = await anyio.create_tcp_listener(local_host="127.0.0.1", local_port=0)
        port = self._listener.extra(anyio.abc.SocketAttribute.local_port)
        self.redirect_uri = f"http://127.0.0.1:{port}{CALLBACK_PATH}"
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        await self._listener.aclose()
        # Reap a browser command that came back (a real browser stays open: not ours).
        with anyio.move_on_after(_BROWSER_GRACE):
            while self._opened is not None and self._opened.poll() is None:
                await anyio.sleep(0.05)

    async def redirect(self, url: str) -> None:
        states = parse_qs(urlsplit(url).query).get("state")
        self._state = states[0] if states else None
        self._show(url, self._open_browser(url))

    def _open_browser(self, url: str) -> bool:
        """Open `url` with `LMFLOW_BROWSER`'s command or the system's browser, without
        waiting for it; False when there is none to open it with."""
        command = os.environ.get(BROWSER_VARIABLE)
        if command:
            try:
                self._opened = subprocess.Popen(
                    [*shlex.split(command), url],
                    stdin=subprocess.DEVNULL,
                    stdout=subprocess.DEVNULL,
                    stderr=subprocess.DEVNULL,
                )
            except (OSError, ValueError):
                return False
            return True
        try:
            webbrowser.get()
        except webbrowser.Error:
            return False  # a machine without a browser: the person opens the URL elsewhere
        # A system browser may take its time to start: never hold up the listener.
        threading.Thread(target=webbrowser.open, args=(url,), daemon=True).start()
        return True

    async def callback(self) -> AuthorizationCodeResult:
        send, receive = anyio.create_memory_object_stream[AuthorizationCodeResult | str](1)
        with anyio.move_on_after(self._timeout):
            async with anyio.create_task_group() as group:
                group.start_soon(self._listener.serve, lambda s: self._answer(s, send))
                outcome = await receive.receive()
                group.cancel_scope.cancel()
            if isinstance(outcome, str):
                raise LoginFailed(outcome)
            return outcome
        raise LoginFailed(
            f"no browser came back to {self.redirect_uri} within {self._timeout:g}s "
            "(oauth: {login_timeout: SECONDS} in the server's settings)"
        )

    async def _answer(
        self, stream: SocketStream, send: MemoryObjectSendStream[AuthorizationCodeResult | str]
    ) -> None:
        async with stream:
            target = await _request_target(stream)
            parts = urlsplit(target or "")
            query = {key: values[0] for key, values in parse_qs(parts.query).items()}
            if parts.path != CALLBACK_PATH:
                await _respond(stream, "404 Not Found", "This is lmflow's login listener.")
                return
            if self._state is None or query.get("state") != self._state:
                await _respond(stream, "400 Bad Request", "The login's state does not match.")
                return
            if "error" in query:
                said = query.get("error_description") or query["error"]
                await _respond(stream, "200 OK", f"The login failed: {said}")
                await send.send(f"the authorization server refused the login: {said}")
                return
            await _respond(stream, "200 OK", "Logged in. You can close this window.")
            await send.send(
                AuthorizationCodeResult(
                    code=query.get("code", ""), state=query["state"], iss=query.get("iss")
                )
            )


async def _request_target(stream: SocketStream) -> str | None:
    """The target of an HTTP request line (`GET /callback?... HTTP/1.1`)."""
    data = b""
    while b"\r\n" not in data and len(data) < _MAX_REQUEST_BYTES:
        try:
            data += await stream.receive()
        except (anyio.EndOfStream, anyio.BrokenResourceError):
            break
    parts = data.split(b"\r\n", 1)[0].decode("latin-1").split()
    return parts[1] if len(parts) == 3 else None


async def _respond(stream: SocketStream, status: str, text: str) -> None:
    body = f"<!doctype html><title>lmflow</title><p>{text}</p>\n".encode()
    head = (
        f"HTTP/1.1 {status}\r\nContent-Type: text/html; charset=utf-8\r\n"
        f"Content-Length: {len(body)}\r\nConnection: close\r\n\r\n"
    ).encode()
    await stream.send(head + body)
