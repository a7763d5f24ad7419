"""Who is asking: named API tokens and, optionally, OpenID Connect bearer JWTs; each identity has scopes.

- Named tokens: `NAME:TOKEN` or `NAME:TOKEN:SCOPE+SCOPE` (comma-separated in `LITEMEDSAM_API_TOKENS`, one a line in
  `--tokens-file`, `#` comments), or a JSON tokens file `{"NAME": {"token": "...", "scopes": ["submit", "read"]}}`.
  A token without scopes gets submit and read. Tokens are at least 16 characters and compared in constant time
  against every configured one: SHA-256 digests of the presented and each configured token (so not even a length
  is compared), each by hmac.compare_digest, with no early exit. A token without a name is refused: every action
  must say who did it.
- OpenID Connect (`--oidc-issuer`, `--oidc-audience`; e.g. Keycloak): a bearer JWT is checked against the issuer's
  JWKS (from its discovery document, or `--oidc-jwks-url`): signature (asymmetric algorithms only), issuer,
  audience, expiry. Its scopes are those of its `scope` claim (space-separated) or `scp` list that this service
  knows; its name is `oidc:` + `preferred_username` (else `sub`), so it can never take a token's name.
- Scopes: `submit` (create jobs), `read` (see one's own jobs and results), `admin` (see and delete everyone's, read
  the audit trail and the metrics).
"""

from __future__ import annotations

import hashlib
import hmac
import json
import logging
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

log = logging.getLogger(__name__)

SUBMIT, READ, ADMIN = "submit", "read", "admin"
SCOPES = (SUBMIT, READ, ADMIN)
DEFAULT_SCOPES = frozenset({SUBMIT, READ})
MIN_TOKEN_LENGTH = 16
NAME_PATTERN = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._@-]{0,63}$")
JWT_ALGORITHMS = ["RS256", "RS384", "RS512", "PS256", "PS384", "PS512", "ES256", "ES384", "ES512", "EdDSA"]
CLOCK_LEEWAY_SECONDS = 30


@dataclass(frozen=True)
class Identity:
    name: str  # the owner of what it makes, and the actor of the audit trail
    scopes: frozenset[str] = field(default_factory=frozenset)
    via: str = "token"  # "token" or "oidc"

    @property
    def is_admin(self) -> bool:
        return ADMIN in self.scopes


class AuthError(Exception):
    """The credentials presented do not identify anyone (the message names why, never the token)."""


# ------------------------------------------------------------------------------------------------ named tokens


def _scopes(values: list[str] | tuple[str, ...], where: str) -> frozenset[str]:
    scopes = frozenset(value.strip() for value in values if value.strip())
    unknown = sorted(scopes - set(SCOPES))
    if unknown:
        raise ValueError(f"{where}: unknown scope(s) {unknown}; known: {list(SCOPES)}")
    return scopes or DEFAULT_SCOPES


def _entry(name: str, token: str, scopes: frozenset[str], where: str) -> tuple[str, Identity]:
    if not NAME_PATTERN.match(name):
        raise ValueError(f"{where}: the name {name[:64]!r} must be letters, digits, '.', '_', '@' or '-' (up to 64)")
    if len(token) < MIN_TOKEN_LENGTH:
        raise ValueError(
            f"{where}: the token of {name!r} is shorter than {MIN_TOKEN_LENGTH} characters: use long random "
            "tokens, e.g. `openssl rand -hex 24`"
        )
    return token, Identity(name, scopes)


def _line(text: str, where: str) -> tuple[str, Identity]:
    parts = text.split(":")
    if len(parts) not in (2, 3) or not parts[0].strip() or not parts[1].strip():
        raise ValueError(
            f"{where}: give each token a name, as NAME:TOKEN or NAME:TOKEN:SCOPE+SCOPE (scopes: {', '.join(SCOPES)})"
        )
    scopes = _scopes(parts[2].split("+"), where) if len(parts) == 3 else DEFAULT_SCOPES
    return _entry(parts[0].strip(), parts[1].strip(), scopes, where)


def _json_tokens(document: Any, where: str) -> list[tuple[str, Identity]]:
    if not isinstance(document, dict):
        raise ValueError(f'{where}: expected {{"NAME": {{"token": "...", "scopes": [...]}}}}')
    entries = []
    for name, entry in document.items():
        if not isinstance(entry, dict) or set(entry) - {"token", "scopes"} or not isinstance(entry.get("token"), str):
            raise ValueError(f'{where}: entry {str(name)[:64]!r} must be {{"token": "...", "scopes": [...]}}')
        scopes = entry.get("scopes", [])
        if not isinstance(scopes, list) or not all(isinstance(s, str) for s in scopes):
            raise ValueError(f"{where}: the scopes of {str(name)[:64]!r} must be a list of strings")
        entries.append(_entry(str(name), entry["token"], _scopes(scopes, where), where))
    return entries


def read_tokens(
    env_value: str | None, tokens_file: Path | None, env_name: str = "the environment"
) -> dict[str, Identity]:
    """token -> identity, from the environment's comma-separated entries and the tokens file (lines or JSON)."""
    entries = [_line(item.strip(), env_name) for item in (env_value or "").split(",") if item.strip()]
    if tokens_file is not None:
        text = Path(tokens_file).read_text(encoding="utf-8")
        if text.lstrip().startswith("{"):
            try:
                document = json.loads(text)
            except json.JSONDecodeError as error:
                raise ValueError(f"{tokens_file}: not valid JSON ({error.msg}, line {error.lineno})") from None
            entries += _json_tokens(document, str(tokens_file))
        else:
            for number, line in enumerate(text.splitlines(), 1):
                if line.strip() and not line.strip().startswith("#"):
                    entries.append(_line(line.strip(), f"{tokens_file}, line {number}"))
    table: dict[str, Identity] = {}
    names: dict[str, Identity] = {}
    for token, identity in entries:
        if token in table and table[token] != identity:
            raise ValueError(f"one token is given to both {table[token].name!r} and {identity.name!r}")
        if identity.name in names and names[identity.name] != identity:
            raise ValueError(f"the name {identity.name!r} is given twice with different tokens or scopes")
        table[token], names[identity.name] = identity, identity
    return table


def _digest(token: str) -> bytes:
    return hashlib.sha256(token.encode("utf-8", "surrogatepass")).digest()


class TokenCheck:
    """Constant-time comparison against every configured token: equal-length digests (the time does not depend on
    the presented token's length or content), every token compared (no early exit on the first match)."""

    def __init__(self, tokens: dict[str, Identity]):
        self._tokens = tuple((_digest(token), identity) for token, identity in tokens.items())

    def __bool__(self) -> bool:
        return bool(self._tokens)

    def identify(self, presented: str) -> Identity | None:
        candidate = _digest(presented)
        found = None
        for digest, identity in self._tokens:
            matched = hmac.compare_digest(candidate, digest)
            found = identity if matched else found
        return found


# ------------------------------------------------------------------------------------------------ OpenID Connect


@dataclass(frozen=True)
class OidcSettings:
    issuer: str
    audience: str
    jwks_url: str | None = None  # None: the issuer's discovery document names it
    timeout: float = 5.0


class OidcVerifier:
    """Checks bearer JWTs against the issuer's published keys (PyJWT's JWKS client, keys cached for 5 minutes)."""

    def __init__(self, settings: OidcSettings):
        self.settings = settings
        self._client: Any = None

    def _jwks(self):
        import jwt

        if self._client is None:
            url = self.settings.jwks_url or self._discover()
            self._client = jwt.PyJWKClient(url, cache_keys=True, lifespan=300, timeout=int(self.settings.timeout))
        return self._client

    def _discover(self) -> str:
        import requests

        url = self.settings.issuer.rstrip("/") + "/.well-known/openid-configuration"
        try:
            response = requests.get(url, timeout=self.settings.timeout, allow_redirects=False)
            response.raise_for_status()
            jwks_url = response.json()["jwks_uri"]
        except (requests.RequestException, ValueError, KeyError, TypeError) as error:
            raise AuthError(
                f"the OpenID Connect issuer's discovery document is unavailable ({type(error).__name__})"
            ) from None
        if not isinstance(jwks_url, str):
            raise AuthError("the OpenID Connect discovery document names no jwks_uri")
        return jwks_url

    def identify(self, token: str) -> Identity:
        import jwt

        try:
            key = self._jwks().get_signing_key_from_jwt(token)
            claims = jwt.decode(
                token,
                key.key,
                algorithms=JWT_ALGORITHMS,
                audience=self.settings.audience,
                issuer=self.settings.issuer,
                leeway=CLOCK_LEEWAY_SECONDS,
                options={"require": ["exp", "iss", "aud"]},
            )
        except jwt.PyJWKClientConnectionError:
            log.warning("OpenID Connect: the issuer's JWKS could not be fetched")
            raise AuthError("the identity provider's keys are unavailable") from None
        except jwt.ExpiredSignatureError:
            raise AuthError("the token has expired") from None
        except jwt.InvalidAudienceError:
            raise AuthError("the token is not for this service (audience)") from None
        except jwt.InvalidIssuerError:
            raise AuthError("the token is from another issuer") from None
        except (jwt.PyJWTError, ValueError) as error:
            raise AuthError(f"the token is not valid ({type(error).__name__})") from None
        name = claims.get("preferred_username") or claims.get("sub")
        if not isinstance(name, str) or not name:
            raise AuthError("the token names no subject")
        granted = claims.get("scope", "")
        listed = granted.split() if isinstance(granted, str) else []
        if isinstance(claims.get("scp"), list):
            listed += [s for s in claims["scp"] if isinstance(s, str)]
        return Identity(f"oidc:{name[:128]}", frozenset(listed) & set(SCOPES), via="oidc")


# ------------------------------------------------------------------------------------------------ both


class Authenticator:
    """A bearer credential -> Identity: the named tokens first, then, when OpenID Connect is configured and the
    credential looks like a JWT (three dot-separated parts), the issuer's keys."""

    def __init__(self, tokens: dict[str, Identity], oidc: OidcSettings | None = None):
        self.tokens = TokenCheck(tokens)
        self.oidc = OidcVerifier(oidc) if oidc else None
        if not self.tokens and self.oidc is None:
            raise ValueError(
                "no API tokens and no OpenID Connect issuer: set LITEMEDSAM_API_TOKENS (NAME:TOKEN,...), give "
                "--tokens-file, or --oidc-issuer with --oidc-audience"
            )

    def identify(self, presented: str | None) -> Identity:
        if not presented:
            raise AuthError("a bearer token is required")
        identity = self.tokens.identify(presented)
        if identity is not None:
            return identity
        if self.oidc is not None and presented.count(".") == 2:
            return self.oidc.identify(presented)
        raise AuthError("the bearer token is not valid")
