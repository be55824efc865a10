"""Who may call `aecli serve`, and how many at once: API keys, the rule for binding beyond
loopback, and the limit on requests in flight.

Keys come from `--api-key-file` (one per line; blank lines and lines starting with # skipped) or
the AECLI_API_KEY environment variable, and are sent as `Authorization: Bearer KEY`. Every key
is compared in constant time (hmac.compare_digest), so the time a refusal takes says nothing
about how much of a key was right; a refusal never echoes what was sent.
"""

from __future__ import annotations

import hmac
import ipaddress
import os
import ssl
from dataclasses import dataclass
from pathlib import Path

from aecli.errors import ConfigError, clip

API_KEY_VARIABLE = "AECLI_API_KEY"
MAX_KEY_FILE_BYTES = 2**20
MIN_KEY_CHARACTERS = 16  # shorter keys are guessable; `openssl rand -hex 32` makes a good one
OPEN_PATHS = frozenset({"/health", "/health/live", "/health/ready"})  # for load balancers: never need a key


def load_api_keys(key_file: Path | None) -> tuple[str, ...]:
    """The keys of --api-key-file, else of AECLI_API_KEY, else none (the service is open)."""
    if key_file is not None:
        try:
            if not key_file.is_file() or key_file.stat().st_size > MAX_KEY_FILE_BYTES:  # (/dev/zero, a folder)
                raise ConfigError(f"--api-key-file {key_file}: not a file of keys (one per line, under 1 MB)")
            text = key_file.read_text(encoding="utf-8")
        except (OSError, UnicodeDecodeError) as exc:
            raise ConfigError(f"--api-key-file {key_file}: cannot read it ({clip(str(exc))})") from None
        keys = tuple(line.strip() for line in text.splitlines() if line.strip() and not line.lstrip().startswith("#"))
        if not keys:
            raise ConfigError(f"--api-key-file {key_file}: holds no key (one per line)")
        where = f"--api-key-file {key_file}"
    else:
        keys = tuple(key for key in [os.environ.get(API_KEY_VARIABLE, "").strip()] if key)
        where = API_KEY_VARIABLE
    for number, key in enumerate(keys, start=1):
        if len(key) < MIN_KEY_CHARACTERS or any(character.isspace() for character in key):
            raise ConfigError(
                f"{where}: key {number} is shorter than {MIN_KEY_CHARACTERS} characters or holds a space; "
                "make one with `openssl rand -hex 32`"
            )
    return keys


def authorized(header: str | None, keys: tuple[str, ...]) -> bool:
    """Whether an Authorization header carries one of `keys` (always true when there are none)."""
    if not keys:
        return True
    scheme, _, sent = (header or "").partition(" ")
    if scheme.lower() != "bearer":
        return False
    presented = sent.strip().encode()
    found = False
    for key in keys:  # every key compared, found or not: the time taken is the same
        found |= hmac.compare_digest(presented, key.encode())
    return found


def is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:  # a host name: it may resolve to anything
        return False


@dataclass(frozen=True)
class Exposure:
    """How the service is reachable: what check_exposure decides from."""

    host: str
    keys: bool
    tls: bool
    insecure: bool


def check_exposure(exposure: Exposure) -> str | None:
    """Refuses a service reachable beyond this machine without both keys and TLS unless
    --insecure says so; returns the warning to print when it proceeds that way."""
    if is_loopback(exposure.host) or (exposure.keys and exposure.tls):
        return None
    missing = " and ".join(
        part for part, present in (("API keys", exposure.keys), ("TLS", exposure.tls)) if not present
    )
    if not exposure.insecure:  # (behind a proxy that terminates TLS, --insecure says so)
        raise ConfigError(
            f"--host {exposure.host}: reachable beyond this machine without {missing}; give --api-key-file and "
            "--ssl-certfile/--ssl-keyfile, or --insecure to serve that way"
        )
    return f"listening on {exposure.host} without {missing}: " + (
        "anyone who can reach this machine can call the service" if not exposure.keys else "keys travel in clear text"
    )


def check_tls(certfile: Path | None, keyfile: Path | None) -> None:
    if (certfile is None) != (keyfile is None):
        raise ConfigError("--ssl-certfile and --ssl-keyfile go together: give both")
    for option, path in (("--ssl-certfile", certfile), ("--ssl-keyfile", keyfile)):
        if path is not None and not path.is_file():
            raise ConfigError(f"{option} {path}: not a file (a PEM certificate or key)")
    if certfile is not None:  # loaded as uvicorn will: a bad pair fails here, not in the first handshake
        try:
            ssl.create_default_context(ssl.Purpose.CLIENT_AUTH).load_cert_chain(certfile, keyfile)
        except (ssl.SSLError, OSError) as exc:
            raise ConfigError(f"--ssl-certfile/--ssl-keyfile: not a usable certificate and key ({exc})") from None
