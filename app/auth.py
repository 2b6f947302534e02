"""Who may see the dashboard: closed by default, sign-in through the institution's identity
provider (Streamlit's native OIDC: ``st.login`` / ``st.user`` / ``st.logout``), an allow-list,
and the administrators.

* **Bind**: ``.streamlit/config.toml`` binds 127.0.0.1. Serving on another address
  (``make serve``, ``python -m app.serve``, ``--server.address``) renders nothing but a refusal
  unless sign-in is configured or the explicit ``DEREF_OPEN=1`` ("open, no sign-in") is set; the
  launcher refuses before starting the server.
* **Sign-in**: configured when ``.streamlit/secrets.toml`` holds an ``[auth]`` section
  (``secrets.toml.example``). Then nothing but the sign-in screen renders before login.
* **Allow-list**: ``DEREF_ALLOWED_USERS`` (or ``allowed_users`` under ``[deref]`` in the
  secrets): e-mail addresses and ``@domain`` entries, comma-separated; empty = every signed-in
  user.
* **Administrators**: ``DEREF_ADMINS`` (or ``admins`` under ``[deref]``), e-mail addresses; they
  may clear every session's caches. Without sign-in on the loopback address the one local user
  is the administrator.
"""

from __future__ import annotations

import os
from dataclasses import dataclass

import streamlit as st

from deref.access import is_loopback

ENV_OPEN = "DEREF_OPEN"
ENV_ALLOWED = "DEREF_ALLOWED_USERS"
ENV_ADMINS = "DEREF_ADMINS"
LOCAL = "local"


def _secrets_section(name: str) -> dict:
    try:
        if name in st.secrets:
            return dict(st.secrets[name])
    except Exception:  # noqa: BLE001 - no secrets.toml at all: nothing configured
        return {}
    return {}


def auth_configured() -> bool:
    """Whether ``[auth]`` is in the secrets (sign-in through an OIDC provider)."""
    return bool(_secrets_section("auth"))


def _listed(name: str, env: str) -> list[str]:
    raw = os.environ.get(env)
    if raw is None:
        raw = _secrets_section("deref").get(name, "")
    items = raw if isinstance(raw, (list, tuple)) else str(raw).split(",")
    return [str(i).strip().lower() for i in items if str(i).strip()]


def allowed(email: str | None, entries: list[str]) -> bool:
    """``email`` matches an entry (an address, or ``@domain``); every e-mail when ``entries`` is empty."""
    if not entries:
        return True
    e = (email or "").strip().lower()
    if not e:
        return False
    return any(e == x or (x.startswith("@") and e.endswith(x)) for x in entries)


@dataclass(frozen=True)
class Viewer:
    """The person using this session."""

    user: str  # e-mail (or subject) when signed in, else "local"
    name: str
    signed_in: bool
    admin: bool


def bind_address() -> str:
    return str(st.get_option("server.address") or "")


def open_without_sign_in_refused() -> str | None:
    """Why this server must not render (a non-loopback bind without sign-in and without
    ``DEREF_OPEN=1``), or None."""
    address = bind_address()
    if is_loopback(address) or auth_configured() or os.environ.get(ENV_OPEN) == "1":
        return None
    where = address or "every network interface"
    return (
        f"This server listens on {where} without sign-in. Configure sign-in ([auth] in "
        ".streamlit/secrets.toml, see secrets.toml.example) or start it with DEREF_OPEN=1 to serve it "
        "open to the network on purpose."
    )


def gate() -> Viewer:
    """Stop the script unless the session may see the app; return who is looking."""
    refusal = open_without_sign_in_refused()
    if refusal:
        st.error(f"**Refusing to serve.** {refusal}")
        st.stop()
    if not auth_configured():
        return Viewer(LOCAL, LOCAL, False, is_loopback(bind_address()))
    if not st.user.is_logged_in:
        _sign_in_screen()
        st.stop()
    email = str(st.user.get("email") or st.user.get("sub") or "")
    name = str(st.user.get("name") or email or "signed-in user")
    if not allowed(email, _listed("allowed_users", ENV_ALLOWED)):
        st.title("DeReF Studio")
        st.error(
            f"**Access refused.** {email or 'This account'} is not on this server's list of allowed users."
        )
        st.button("Sign out", on_click=st.logout, key="auth_logout_refused")
        st.stop()
    return Viewer(email or name, name, True, email.lower() in _listed("admins", ENV_ADMINS))


def _sign_in_screen() -> None:
    st.title("DeReF Studio")
    st.write("This dashboard shows patients' data. Sign in with your institution's account to continue.")
    st.button("Sign in", type="primary", on_click=st.login, key="auth_login", icon=":material/login:")


def sidebar_identity(viewer: Viewer) -> None:
    """The signed-in user's name and a sign-out button in the sidebar."""
    if not viewer.signed_in:
        return
    with st.sidebar:
        st.caption(f"Signed in as **{viewer.name}**" + (" · administrator" if viewer.admin else ""))
        st.button("Sign out", on_click=st.logout, key="auth_logout", icon=":material/logout:")


__all__ = [
    "Viewer",
    "allowed",
    "auth_configured",
    "gate",
    "is_loopback",
    "open_without_sign_in_refused",
    "sidebar_identity",
]
