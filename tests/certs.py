"""Throw-away TLS material for tests: a CA, server certificates, a client certificate.

Made with the ``openssl`` command-line tool (no Python dependency); every key is EC P-256 so
generation takes milliseconds. ``make_pki(directory)`` returns the paths.
"""

from __future__ import annotations

import shutil
import subprocess
from dataclasses import dataclass
from pathlib import Path

__all__ = ["PKI", "make_pki", "openssl_available"]


@dataclass(frozen=True)
class PKI:
    ca_cert: Path
    ca_key: Path
    server_cert: Path  # for 127.0.0.1 and localhost
    server_key: Path
    wrong_host_cert: Path  # signed by the same CA, for wrong.example only
    wrong_host_key: Path
    client_cert: Path
    client_key: Path
    other_ca_cert: Path  # a CA that signed nothing here


def openssl_available() -> bool:
    return shutil.which("openssl") is not None


def _run(*args: str | Path) -> None:
    subprocess.run(["openssl", *map(str, args)], check=True, capture_output=True)


def _key(path: Path) -> Path:
    _run("ecparam", "-name", "prime256v1", "-genkey", "-noout", "-out", path)
    return path


def _ca(directory: Path, name: str) -> tuple[Path, Path]:
    key = _key(directory / f"{name}.key")
    cert = directory / f"{name}.crt"
    _run("req", "-x509", "-new", "-key", key, "-out", cert, "-days", "2", "-subj", f"/CN={name}",
         "-addext", "basicConstraints=critical,CA:TRUE", "-addext", "keyUsage=critical,keyCertSign,cRLSign")
    return cert, key


def _leaf(directory: Path, name: str, ca: tuple[Path, Path], *, san: str | None, usage: str) -> tuple[Path, Path]:
    key = _key(directory / f"{name}.key")
    csr = directory / f"{name}.csr"
    cert = directory / f"{name}.crt"
    ext = directory / f"{name}.ext"
    lines = ["basicConstraints=CA:FALSE", f"extendedKeyUsage={usage}"]
    if san:
        lines.append(f"subjectAltName={san}")
    ext.write_text("\n".join(lines) + "\n")
    _run("req", "-new", "-key", key, "-out", csr, "-subj", f"/CN={name}")
    _run("x509", "-req", "-in", csr, "-CA", ca[0], "-CAkey", ca[1], "-CAcreateserial", "-out", cert,
         "-days", "2", "-extfile", ext)
    return cert, key


def make_pki(directory: Path) -> PKI:
    directory.mkdir(parents=True, exist_ok=True)
    ca = _ca(directory, "test-ca")
    other_ca, _ = _ca(directory, "other-ca")
    server = _leaf(directory, "server", ca, san="IP:127.0.0.1,DNS:localhost", usage="serverAuth")
    wrong = _leaf(directory, "wrong-host", ca, san="DNS:wrong.example", usage="serverAuth")
    client = _leaf(directory, "client", ca, san=None, usage="clientAuth")
    return PKI(ca[0], ca[1], server[0], server[1], wrong[0], wrong[1], client[0], client[1], other_ca)
