"""The dashboard's login gate (issue 12): who is using the lab, decided before any page is drawn.

app/main.py calls `gate()` before navigation. On one person's laptop (auth mode "none") nothing is
asked and the actor is the local user, with no rules enforced. A shared lab asks for a login first:
local accounts (storage.accounts: a name and password form, a signed session token kept in a
cookie so a reload stays logged in) and/or Streamlit's OpenID Connect login (st.login, configured
in .streamlit/secrets.toml). Pages ask `current_actor()` whom to act as (tasks.access.Actor).

The pure parts (cookie text, which login methods to offer, the actor of a login) are plain
functions, so tests check them without a browser.
"""

from __future__ import annotations

import importlib.util
import json
import re
import time
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import streamlit as st

COOKIE = "gamma_lab_session"
TOKEN_RE = re.compile(r"[A-Za-z0-9_.-]{1,400}")  # storage.accounts' "<id>.<expires>.<hex>", nothing else
K_ACTOR, K_TOKEN, K_USER, K_COOKIE_JS, K_LOGGED_OUT = (
    "auth.actor",
    "auth.token",
    "auth.user",
    "auth.cookie_js",
    "auth.logged_out",
)
NO_AUTHLIB = "Identity-provider login needs Authlib on the server: pip install 'streamlit[auth]'"
DEFAULT_PROVIDER = "default"  # st.login's name for an [auth] section without named providers


# ----------------------------------------------------------------------------- pure parts


def cookie_text(token: str, max_age_s: float) -> str:
    """The document.cookie assignment that keeps a session token: the whole site, never sent on
    another site's requests (SameSite=Strict), gone after `max_age_s` (0 deletes it). Refuses a
    token that is not storage.accounts' format, so nothing but that format reaches the page's script."""
    if token and not TOKEN_RE.fullmatch(token):
        raise ValueError("session token: letters, digits, '.', '_' and '-' only")
    return f"{COOKIE}={token}; Path=/; SameSite=Strict; Max-Age={max(0, int(max_age_s))}"


def token_max_age(token: str, now: float | None = None) -> int:
    """Seconds until the token's own expiry (its second field, storage.accounts.start_session's
    format), so the cookie goes when the session does; 0 for a token without a readable one."""
    parts = token.split(".")
    try:
        expires = float(parts[1])
    except (IndexError, ValueError):
        return 0
    return max(0, int(expires - (time.time() if now is None else now)))


def cookie_script(token: str, max_age_s: float) -> str:
    """HTML whose script sets (or, with an empty token and 0, clears) the session cookie."""
    return f"<script>document.cookie = {json.dumps(cookie_text(token, max_age_s))};</script>"


@dataclass(frozen=True)
class LoginMethods:
    """What the login screen offers: the name-and-password form and/or identity-provider buttons."""

    password: bool
    providers: tuple[str, ...]  # st.login provider names ("default" for an unnamed one)

    @property
    def required(self) -> bool:
        return self.password or bool(self.providers)


def oidc_providers(auth_section: Mapping[str, Any] | None) -> tuple[str, ...]:
    """The st.login providers an [auth] section of secrets.toml configures: each named sub-section
    ([auth.google]), and "default" when the section itself holds client_id (one unnamed provider)."""
    if not auth_section:
        return ()
    named = tuple(k for k, v in auth_section.items() if isinstance(v, Mapping) and k != "client_kwargs")
    return ((DEFAULT_PROVIDER,) if auth_section.get("client_id") else ()) + named


def login_methods(mode: str, providers: tuple[str, ...]) -> LoginMethods:
    """Which login methods `mode` (settings.auth_mode) asks for: "none" none; "local" the password form,
    plus the identity providers configured in secrets.toml; "oidc" the identity providers only."""
    if mode == "none":
        return LoginMethods(False, ())
    if mode == "local":
        return LoginMethods(True, providers)
    if mode == "oidc":
        return LoginMethods(False, providers)
    raise ValueError(f"auth: unknown mode {mode!r} (allowed: none, local, oidc)")


def provider_label(provider: str) -> str:
    return "Log in with single sign-on" if provider == DEFAULT_PROVIDER else f"Log in with {provider.title()}"


def oidc_name(info: Mapping[str, Any]) -> str | None:
    """The name an identity-provider login acts as: its e-mail, else its name (None when neither)."""
    for key in ("email", "name"):
        value = info.get(key)
        if isinstance(value, str) and value.strip():
            return value.strip()
    return None


def actor_of(name: str, record: Any | None) -> Any:
    """The enforced actor of a logged-in user: admin only when the users table says so (`record`, a
    storage.accounts.User or None for an identity-provider user who has no row)."""
    from tasks.access import Actor

    return Actor(name=name, is_admin=bool(record is not None and record.is_admin), enforced=True)


def free_actor(settings: Any) -> Any:
    """The actor when nobody logs in (auth mode "none"): the local user, no rules."""
    from tasks.access import Actor

    return Actor(name=settings.user, is_admin=False, enforced=False)


# ----------------------------------------------------------------------------- Streamlit part


@st.cache_resource(show_spinner=False)
def _accounts(data_dir: str, registry_url: str) -> Any:
    """One storage.accounts.Accounts per server and data folder (its secret is read once)."""
    from storage.accounts import Accounts, cookie_secret
    from storage.registry import Registry
    from storage.settings import load_settings

    settings = load_settings()
    return Accounts(Registry(registry_url), cookie_secret(settings))


def accounts(settings: Any) -> Any:
    return _accounts(str(settings.data_dir), settings.registry_url)


def auth_mode(settings: Any) -> str:
    """The effective mode for this server: a dashboard listening beyond loopback is a shared lab."""
    return str(settings.auth_mode(st.get_option("server.address") or None))


def _secrets_auth() -> Mapping[str, Any] | None:
    """The [auth] section of .streamlit/secrets.toml, or None when there is none."""
    try:
        if not st.secrets.load_if_toml_exists():
            return None
        section = st.secrets.get("auth")
    except Exception:  # noqa: BLE001 - an unreadable secrets file: Streamlit reports it; no OIDC here
        return None
    if section is None:
        return None
    return section.to_dict() if hasattr(section, "to_dict") else section


def gate(settings: Any) -> Any:
    """Return the actor of this browser session, or draw the login screen and stop the script."""
    mode = auth_mode(settings)
    methods = login_methods(mode, oidc_providers(_secrets_auth()))
    if not methods.required:
        if mode == "oidc":
            st.error("auth = oidc needs an [auth] section in .streamlit/secrets.toml (README: Accounts).")
            st.stop()
        actor = free_actor(settings)
        st.session_state[K_ACTOR] = actor
        return actor
    _flush_cookie()
    actor = _oidc_actor(settings) if methods.providers else None
    if actor is None and methods.password:
        actor = _session_actor(settings)
    if actor is None:
        _login_screen(settings, methods)
        st.stop()
    st.session_state[K_ACTOR] = actor
    _sidebar_user(settings, actor)
    return actor


def current_actor() -> Any:
    """Whom this session acts as (set by gate(), which app/main.py runs before every page)."""
    actor = st.session_state.get(K_ACTOR)
    if actor is None:  # a page run without main.py (never in `gamma-lab serve`): only a free lab allows it
        from app.ui import resources

        settings = resources().settings
        if auth_mode(settings) != "none":
            st.error("Log in first: open the dashboard's home page.")
            st.stop()
        actor = free_actor(settings)
    return actor


def _flush_cookie() -> None:
    """Run the cookie script a login or logout left for this run (a script in an element drawn just
    before st.rerun may never reach the browser, so it is drawn on the run after)."""
    script = st.session_state.pop(K_COOKIE_JS, None)
    if script:
        with st.sidebar:
            st.html(script, unsafe_allow_javascript=True)


def _oidc_actor(settings: Any) -> Any | None:
    if not getattr(st.user, "is_logged_in", False):
        return None
    name = oidc_name(st.user.to_dict())
    if name is None:
        st.error("The identity provider gave neither an e-mail nor a name: this dashboard cannot tell who you are.")
        st.stop()
    return actor_of(name, accounts(settings).get_user(name))


def _session_actor(settings: Any) -> Any | None:
    """The user of this session's token (kept in session state, or the cookie of a reload), checked
    against the registry on every run: an expired or revoked session logs out at once."""
    token = st.session_state.get(K_TOKEN)
    if token is None and not st.session_state.get(K_LOGGED_OUT):
        token = st.context.cookies.get(COOKIE)
    if not token:
        return None
    user = accounts(settings).check_session(token)
    if user is None:
        st.session_state.pop(K_TOKEN, None)
        st.session_state[K_LOGGED_OUT] = True  # the stale cookie of this connection is not read again
        st.session_state["auth.expired"] = True
        st.session_state[K_COOKIE_JS] = cookie_script("", 0)
        _flush_cookie()
        return None
    st.session_state[K_TOKEN] = token
    st.session_state[K_USER] = user
    return actor_of(user.name, user)


def _login_screen(settings: Any, methods: LoginMethods) -> None:
    st.title("gamma-lab")
    if st.session_state.pop("auth.expired", False):
        st.warning("Your session expired or was ended: log in again.", icon=":material/schedule:")
    if methods.password:
        _password_form(settings)
    # st.login needs Authlib (streamlit[auth], a dependency); an install without it says so here
    no_authlib = None if importlib.util.find_spec("authlib") else NO_AUTHLIB
    for provider in methods.providers:
        if st.button(provider_label(provider), key=f"auth.oidc.{provider}", disabled=bool(no_authlib), help=no_authlib):
            st.login(provider)
    if methods.providers and no_authlib:
        st.caption(no_authlib)


def _password_form(settings: Any) -> None:
    from storage.accounts import LoginRefused

    with st.form("auth.login"):
        name = st.text_input("User name", key="auth.name")
        password = st.text_input("Password", type="password", key="auth.password")
        submitted = st.form_submit_button("Log in", type="primary")
    if not submitted:
        return
    acc = accounts(settings)
    try:
        user = acc.login(name.strip(), password, client=st.context.ip_address or "")
    except LoginRefused as exc:
        st.error(exc.message, icon=":material/lock:")
        return
    token = acc.start_session(user.name, hours=settings.session_hours)
    st.session_state[K_TOKEN] = token
    st.session_state[K_USER] = user
    st.session_state[K_LOGGED_OUT] = False
    st.session_state[K_COOKIE_JS] = cookie_script(token, token_max_age(token))
    st.rerun()


def _sidebar_user(settings: Any, actor: Any) -> None:
    """Who is logged in, and the way out."""
    with st.sidebar:
        st.caption(f"Logged in as **{actor.name}**" + (" (admin)" if actor.is_admin else ""))
        if st.button("Log out", key="auth.logout", icon=":material/logout:"):
            token = st.session_state.pop(K_TOKEN, None)
            if token is not None:
                accounts(settings).end_session(token)
                st.session_state[K_LOGGED_OUT] = True
                st.session_state[K_COOKIE_JS] = cookie_script("", 0)
            st.session_state.pop(K_USER, None)
            st.session_state.pop(K_ACTOR, None)
            if getattr(st.user, "is_logged_in", False):
                st.logout()
            st.rerun()
